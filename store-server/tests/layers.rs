//! The server's modules import downward only: each may use the ones before it in `LAYERS`,
//! never one after it, so there is no import cycle. Read from the source text, as a newcomer
//! would: every `crate::module` a file names.

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom first. A module may use only modules listed before it.
const LAYERS: &[&str] = &[
    "protocol",
    "decide",
    "crypto",
    "store",
    "metrics",
    "append",
    "scavenger",
    "subscriptions",
    "groups",
    "auth",
    "http",
    "listen",
    "config",
    "server",
    "tools",
];

/// Items of the crate root that are not modules.
const ROOT_ITEMS: &[&str] = &["error_chain"];

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The modules a source text names through `crate::`, grouped imports included.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    };
    for (index, _) in text.match_indices("crate::") {
        let rest = &text[index + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            // `{a, b::c}`: the first segment of each entry.
            for entry in group.split(',') {
                let name = ident(entry.trim());
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            names.insert(ident(rest));
        }
    }
    names
}

#[test]
fn modules_import_downward_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let module = first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let rank = LAYERS.iter().position(|m| *m == module).unwrap_or_else(|| {
            panic!("module {module} is not in LAYERS: place it where it belongs")
        });
        let text = std::fs::read_to_string(file).expect("read source");
        for used in named_modules(&text) {
            if used == module || ROOT_ITEMS.contains(&used.as_str()) {
                continue;
            }
            match LAYERS.iter().position(|m| *m == used) {
                Some(used_rank) if used_rank < rank => {}
                Some(_) => wrong.push(format!("{} uses crate::{used}", relative.display())),
                None => {
                    wrong.push(format!("{} uses crate::{used}, not a module", relative.display()))
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports that go up or sideways:\n{}", wrong.join("\n"));
}

#[test]
fn grouped_and_plain_imports_are_both_seen() {
    let names = named_modules("use crate::{append, store::Error};\nlet x = crate::metrics::M;");
    let expected: BTreeSet<String> =
        ["append", "store", "metrics"].iter().map(|s| s.to_string()).collect();
    assert_eq!(names, expected);
}
