//! How `storectl` prints: aligned columns with a bold header on a terminal, NDJSON (one
//! JSON object a line) when piped or with `--json`; and the exit status of an error.

use anstyle::{AnsiColor, Style};
use projection_sdk::Error;
use projection_sdk::protocol::ProblemType;
use serde_json::Value;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// How results are printed.
#[derive(Clone, Copy)]
pub struct Output {
    /// NDJSON instead of a table.
    pub json: bool,
    /// ANSI colour (a terminal, and `NO_COLOR` unset).
    pub colour: bool,
}

impl Output {
    /// JSON when asked or when stdout is not a terminal; colour only on a terminal.
    pub fn new(json: bool) -> Self {
        let terminal = std::io::stdout().is_terminal();
        let colour = terminal && std::env::var_os("NO_COLOR").is_none();
        Self { json: json || !terminal, colour }
    }

    /// Rows: as a table under `columns` (each row's values by those keys), or each row
    /// as one JSON line.
    pub fn rows(&self, columns: &[&str], rows: &[Value]) {
        let mut out = std::io::stdout().lock();
        if self.json {
            for row in rows {
                let _ = writeln!(out, "{row}");
            }
            return;
        }
        let cells: Vec<Vec<String>> =
            rows.iter().map(|row| columns.iter().map(|c| cell(&row[*c])).collect()).collect();
        let widths: Vec<usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cells.iter().map(|r| r[i].chars().count()).chain([c.len()]).max().unwrap_or(0)
            })
            .collect();
        let header: Vec<String> =
            columns.iter().zip(&widths).map(|(c, w)| format!("{:<w$}", c.to_uppercase())).collect();
        let _ = writeln!(out, "{}", self.paint(Style::new().bold(), header.join("  ").trim_end()));
        for row in cells {
            let line: Vec<String> =
                row.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
    }

    /// One JSON value: pretty on a terminal, one line otherwise.
    pub fn value(&self, value: &Value) {
        let text = if self.json {
            value.to_string()
        } else {
            serde_json::to_string_pretty(value).unwrap_or_default()
        };
        println!("{text}");
    }

    /// An event as it arrives: a JSON line, or a line of its own on a terminal.
    pub fn event(&self, event: &Value) {
        if self.json {
            println!("{event}");
            return;
        }
        let erased = if event["erased"] == true { " (erased)" } else { "" };
        println!(
            "{} {}@{} {}{erased} {}",
            self.paint(Style::new().dimmed(), &cell(&event["position"])),
            event["stream"].as_str().unwrap_or(""),
            event["revision"],
            self.paint(AnsiColor::Cyan.on_default(), event["type"].as_str().unwrap_or("")),
            event["data"],
        );
    }

    /// A line for a person on stderr (a warning, progress): never mixed into the output.
    pub fn note(&self, text: &str) {
        eprintln!("{text}");
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if self.colour { format!("{style}{text}{style:#}") } else { text.to_owned() }
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Exit statuses scripts can test (also in `storectl --help`).
pub const EXIT_HELP: &str = "Exit status: 0 done; 1 failed (unreachable, a server error, bad \
    input); 2 usage; 3 not found; 4 conflict (expected revision, event id, condition); 5 not \
    allowed (401, 403); 6 gone (a hard-deleted stream); 7 unavailable (503: retry).";

/// The exit status of `err`, as [`EXIT_HELP`] says.
pub fn exit_code(err: &Error) -> ExitCode {
    let code = match err.problem_type() {
        Some(
            ProblemType::StreamNotFound
            | ProblemType::ConsumerNotFound
            | ProblemType::DataSubjectNotFound
            | ProblemType::NotFound,
        ) => 3,
        Some(
            ProblemType::WrongExpectedRevision
            | ProblemType::DuplicateEventId
            | ProblemType::ConditionFailed
            | ProblemType::WrongExpectedPosition
            | ProblemType::PositionMovesBackwards,
        ) => 4,
        Some(ProblemType::StreamDeleted) => 6,
        _ => match err {
            Error::Problem(problem) if matches!(problem.status, 401 | 403) => 5,
            Error::Problem(problem) if problem.status == 404 => 3,
            Error::Problem(problem) if problem.status == 503 => 7,
            _ => 1,
        },
    };
    ExitCode::from(code)
}
