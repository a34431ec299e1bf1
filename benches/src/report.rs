//! Turns a file of report lines (ours and the peers', one JSON object a line) into
//! `results.md`, the targets with their ratios and every figure, and PNG plots.
//! When a measurement appears twice, the later line wins.

use plotters::prelude::*;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where the report lines are, and where the tables and plots go.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The report lines.
    #[arg(long)]
    results: PathBuf,
    /// `benches/growth`'s lines, drawn as `growth-*.png` and tabled in `growth.md`.
    #[arg(long)]
    growth: Option<PathBuf>,
    /// Folder for `results.md` and the PNG plots.
    #[arg(long)]
    out: PathBuf,
    /// A TrueType font for the plots' text.
    #[arg(
        long,
        env = "BENCH_FONT",
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

/// Every system that appends, in the order tables and legends list them.
const SYSTEMS: [&str; 7] = [
    "store-postgres",
    "store-sqlite",
    "postgres-raw",
    "sqlite-raw",
    "umadb",
    "message-db",
    "message-db-one-category",
];
const CLIENTS: [u64; 4] = [1, 8, 64, 256];
const BATCHES: [u64; 3] = [1, 10, 100];

struct Results(Vec<Value>);

impl Results {
    /// The last line of `system` and `scenario` whose fields equal `matching`.
    fn find(&self, system: &str, scenario: &str, matching: &[(&str, Value)]) -> Option<&Value> {
        self.0.iter().rev().find(|line| {
            line["system"] == system
                && line["scenario"] == scenario
                && matching.iter().all(|(key, value)| &line[*key] == value)
        })
    }

    fn appends(&self, system: &str, clients: u64, batch: u64) -> Option<&Value> {
        self.find(
            system,
            "appends",
            &[("clients", clients.into()), ("events_per_request", batch.into())],
        )
    }

    fn rate(&self, system: &str, clients: u64, batch: u64) -> Option<f64> {
        self.appends(system, clients, batch)?["events_per_sec"].as_f64()
    }
}

/// Writes the tables and plots.
pub fn run(args: Args) {
    // `benches/growth` on its own (into a folder of its own) has no comparison to table.
    let results = match args.growth.is_some() && !args.results.exists() {
        true => Results(Vec::new()),
        false => read_lines(&args.results),
    };
    let growth = args.growth.as_deref().map(read_lines);
    std::fs::create_dir_all(&args.out).expect("the output folder");

    if !results.0.is_empty() {
        let mut page = String::new();
        targets(&results, &mut page);
        appends_table(&results, &mut page);
        other_tables(&results, &mut page);
        let markdown = args.out.join("results.md");
        std::fs::write(&markdown, page).expect("write results.md");
        println!("wrote {}", markdown.display());
    }
    if let Some(growth) = &growth {
        let markdown = args.out.join("growth.md");
        std::fs::write(&markdown, growth_table(growth)).expect("write growth.md");
        println!("wrote {}", markdown.display());
    }

    match std::fs::read(&args.font) {
        Ok(font) => {
            let font: &'static [u8] = Box::leak(font.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, font).is_err() {
                eprintln!("{} is not a usable font: no plots", args.font.display());
                return;
            }
            for batch in BATCHES {
                plot_throughput(&results, batch, &args.out);
            }
            plot_latency(&results, &args.out);
            if let Some(growth) = &growth {
                plot_growth(growth, &args.out);
            }
        }
        Err(e) => eprintln!("no font at {} ({e}): no plots", args.font.display()),
    }
}

fn read_lines(path: &Path) -> Results {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    Results(text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
}

/// `growth` lines as a table, then the catch-up of the whole log.
fn growth_table(growth: &Results) -> String {
    let mut page = String::from(
        "| system | stored | appends/s | p99 ms | stream read p50 / p99 ms | category read p50 / p99 ms | RSS peak MB |\n\
         | --- | ---: | ---: | ---: | --- | --- | ---: |\n",
    );
    let ms = |v: &Value| match (v["p50"].as_f64(), v["p99"].as_f64()) {
        (Some(p50), Some(p99)) => format!("{p50:.2} / {p99:.2}"),
        _ => "".into(),
    };
    for l in growth.0.iter().filter(|l| l["stored"].is_u64()) {
        let _ = writeln!(
            page,
            "| {} | {} | {} | {} | {} | {} | {} |",
            l["system"].as_str().unwrap_or(""),
            l["stored"],
            l["events_per_sec"],
            l["latency_ms"]["p99"].as_f64().map_or(String::new(), |v| format!("{v:.2}")),
            ms(&l["stream_read_ms"]),
            ms(&l["category_read_ms"]),
            l["server_rss_mb"]["peak"].as_f64().map_or(String::new(), |mb| format!("{mb:.1}")),
        );
    }
    for l in growth.0.iter().filter(|l| l["scenario"] == "catchup") {
        let _ = writeln!(
            page,
            "\nCatch-up, {}: {} events at {} events/s, server RSS {:.1} MB before, {:.1} MB peak",
            l["system"].as_str().unwrap_or(""),
            l["events"],
            l["events_per_sec"],
            l["server_rss_mb"]["before"].as_f64().unwrap_or(0.0),
            l["server_rss_mb"]["peak"].as_f64().unwrap_or(0.0),
        );
    }
    page
}

fn ratio_row(
    page: &mut String,
    target: &str,
    ours: Option<f64>,
    theirs: Option<f64>,
    at_least: f64,
) {
    let row = match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => {
            let ratio = ours / theirs;
            let verdict = if ratio >= at_least { "met" } else { "missed" };
            format!("| {target} | {ours:.0} / {theirs:.0} | {ratio:.3}× | {verdict} |")
        }
        _ => format!("| {target} | not measured | | |"),
    };
    let _ = writeln!(page, "{row}");
}

fn targets(results: &Results, page: &mut String) {
    let _ =
        writeln!(page, "## Targets\n\n| target | measured | ratio | |\n| --- | --- | --- | --- |");
    let pg = |clients, batch| results.rate("store-postgres", clients, batch);
    ratio_row(
        page,
        "PostgreSQL backend, single events, 64 clients ≥ 2× raw insert transactions",
        pg(64, 1),
        results.rate("postgres-raw", 64, 1),
        2.0,
    );
    ratio_row(
        page,
        "… ≥ 4× Message DB `write_message` (across categories)",
        pg(64, 1),
        results.rate("message-db", 64, 1),
        4.0,
    );
    ratio_row(page, "… ≥ 1.2× UmaDB", pg(64, 1), results.rate("umadb", 64, 1), 1.2);
    ratio_row(
        page,
        "PostgreSQL backend, 100-event appends, 64 clients ≥ 0.8× raw 100-row transactions",
        pg(64, 100),
        results.rate("postgres-raw", 64, 100),
        0.8,
    );
    ratio_row(
        page,
        "SQLite backend, single events, 64 clients ≥ 1.5× PostgreSQL backend",
        results.rate("store-sqlite", 64, 1),
        pg(64, 1),
        1.5,
    );
    ratio_row(
        page,
        "… ≥ 1.2× UmaDB",
        results.rate("store-sqlite", 64, 1),
        results.rate("umadb", 64, 1),
        1.2,
    );
    ratio_row(
        page,
        "SQLite backend, 100-event appends, 64 clients ≥ 0.8× UmaDB",
        results.rate("store-sqlite", 64, 100),
        results.rate("umadb", 64, 100),
        0.8,
    );
    let ordering = |ordered: bool| {
        let matching = [
            ("ordered", Value::from(ordered)),
            ("clients", 1.into()),
            ("events_per_request", 30.into()),
        ];
        results.find("postgres-raw", "ordering", &matching)?["events_per_sec"].as_f64()
    };
    ratio_row(
        page,
        "Ordering: commits under the log-head lock ≥ 0.85× without it (group-commit shape)",
        ordering(true),
        ordering(false),
        0.85,
    );
    for (backend, target) in [("postgres", 0.8), ("sqlite", 0.5)] {
        let system = format!("store-{backend}");
        let raw = results.find(&format!("{backend}-raw"), "reads", &[]);
        ratio_row(
            page,
            &format!("SSE catch-up, {backend} ≥ {target}× one raw connection's reads"),
            results.find(&system, "catchup", &[]).and_then(|l| l["events_per_sec"].as_f64()),
            raw.and_then(|l| l["events_per_sec"].as_f64()),
            target,
        );
    }
    for system in ["store-postgres", "store-sqlite"] {
        let p50 = results.appends(system, 1, 1).and_then(|l| l["latency_ms"]["p50"].as_f64());
        let live = results.find(system, "live", &[]);
        let p99 = live.and_then(|l| l["append_to_receive_ms"]["p99"].as_f64());
        let subscribers = live.map_or(Value::Null, |l| l["subscribers"].clone());
        let _ = writeln!(
            page,
            "| {system}: 1 client p50 ≤ 0.8 ms | {} | | {} |",
            fmt_ms(p50),
            verdict(p50.map(|v| v <= 0.8))
        );
        let _ = writeln!(
            page,
            "| {system}: {subscribers} live subscribers, append→receive p99 < 20 ms | {} | | {} |",
            fmt_ms(p99),
            verdict(p99.map(|v| v < 20.0))
        );
    }
    let projection = results
        .find("store-postgres", "projection", &[])
        .and_then(|l| l["events_per_sec"].as_f64());
    let _ = writeln!(
        page,
        "| projection runner ≥ 20,000 events/s | {} | | {} |\n",
        projection.map_or("not measured".into(), |v| format!("{v:.0}/s")),
        verdict(projection.map(|v| v >= 20_000.0))
    );
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or("not measured".into(), |v| format!("{v:.2} ms"))
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "",
    }
}

fn appends_table(results: &Results, page: &mut String) {
    let _ = writeln!(
        page,
        "## Appends\n\nEvents per second, and request latency in ms (p50 / p99 / max).\n\n\
         | system | clients | events/request | events/s | p50 | p99 | max | requests/commit |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for system in SYSTEMS {
        for batch in BATCHES {
            for clients in CLIENTS {
                let Some(line) = results.appends(system, clients, batch) else { continue };
                let latency = &line["latency_ms"];
                let per_commit = line["requests_per_commit"]
                    .as_f64()
                    .map_or(String::new(), |v| format!("{v:.1}"));
                let _ = writeln!(
                    page,
                    "| {system} | {clients} | {batch} | {:.0} | {:.2} | {:.2} | {:.1} | {per_commit} |",
                    line["events_per_sec"].as_f64().unwrap_or(0.0),
                    latency["p50"].as_f64().unwrap_or(0.0),
                    latency["p99"].as_f64().unwrap_or(0.0),
                    latency["max"].as_f64().unwrap_or(0.0),
                );
            }
        }
    }
    let _ = writeln!(page);
}

fn other_tables(results: &Results, page: &mut String) {
    let lines =
        |scenario: &'static str| results.0.iter().filter(move |l| l["scenario"] == scenario);
    let _ = writeln!(
        page,
        "## Contention\n\n| system | clients | streams | commands/s | retries per command | p50 | p99 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for l in lines("contention") {
        let _ = writeln!(
            page,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            l["system"].as_str().unwrap_or(""),
            l["clients"],
            l["streams"],
            l["events_per_sec"],
            l["retries_per_command"].as_f64().unwrap_or(0.0),
            l["command_latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            l["command_latency_ms"]["p99"].as_f64().unwrap_or(0.0)
        );
    }
    let _ = writeln!(
        page,
        "\n## Reads and catch-up\n\n| system | scenario | events | events/s | server RSS before / peak (MB) |\n| --- | --- | ---: | ---: | --- |"
    );
    for l in results.0.iter().filter(|l| l["scenario"] == "reads" || l["scenario"] == "catchup") {
        let rss = &l["server_rss_mb"];
        let rss = if rss.is_null() {
            String::new()
        } else {
            format!(
                "{:.0} / {:.0}",
                rss["before"].as_f64().unwrap_or(0.0),
                rss["peak"].as_f64().unwrap_or(0.0)
            )
        };
        let _ = writeln!(
            page,
            "| {} | {} | {} | {} | {rss} |",
            l["system"].as_str().unwrap_or(""),
            l["scenario"].as_str().unwrap_or(""),
            l["events"],
            l["events_per_sec"]
        );
    }
    let _ = writeln!(
        page,
        "\n## Live subscribers\n\n| system | subscribers | appends/s | delivered / expected | p50 | p99 | max |\n| --- | ---: | ---: | --- | ---: | ---: | ---: |"
    );
    for l in lines("live") {
        let ms = &l["append_to_receive_ms"];
        let _ = writeln!(
            page,
            "| {} | {} | {} | {} / {} | {:.2} | {:.2} | {:.1} |",
            l["system"].as_str().unwrap_or(""),
            l["subscribers"],
            l["appends_per_sec"],
            l["deliveries"],
            l["deliveries_expected"],
            ms["p50"].as_f64().unwrap_or(0.0),
            ms["p99"].as_f64().unwrap_or(0.0),
            ms["max"].as_f64().unwrap_or(0.0)
        );
    }
    let _ =
        writeln!(page, "\n## Projection\n\n| system | events | events/s |\n| --- | ---: | ---: |");
    for l in lines("projection") {
        let _ = writeln!(
            page,
            "| {} | {} | {} |",
            l["system"].as_str().unwrap_or(""),
            l["events"],
            l["events_per_sec"]
        );
    }
    let _ = writeln!(
        page,
        "\n## Ordering: the log-head lock, with and without\n\n| ordered | clients | rows/transaction | events/s |\n| --- | ---: | ---: | ---: |"
    );
    for l in lines("ordering") {
        let _ = writeln!(
            page,
            "| {} | {} | {} | {} |",
            l["ordered"], l["clients"], l["events_per_request"], l["events_per_sec"]
        );
    }
    let _ = writeln!(page);
}

fn colour(index: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(index).to_rgba().rgb();
    RGBColor(r, g, b)
}

/// The x axis of a plot, log-scaled: what it counts, its range, how its labels read.
struct XAxis {
    desc: &'static str,
    range: std::ops::Range<f64>,
    label: fn(&f64) -> String,
}

/// Client counts, 1 to 256.
const CLIENTS_AXIS: XAxis =
    XAxis { desc: "concurrent clients", range: 0.8..320.0, label: |x| format!("{x:.0}") };

/// Draws one line per system, on log-scaled axes.
fn plot(
    path: &Path,
    caption: &str,
    (x_axis, y_desc): (&XAxis, &str),
    legend: SeriesLabelPosition,
    series: Vec<(String, Vec<(f64, f64)>)>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (mut low, mut high) = (f64::MAX, f64::MIN);
    for (_, points) in &series {
        for (_, y) in points {
            low = low.min(*y);
            high = high.max(*y);
        }
    }
    if series.is_empty() || low <= 0.0 {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(
            x_axis.range.clone().log_scale(),
            (low / 2.0..high * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc(x_axis.desc)
        .y_desc(y_desc)
        .x_label_formatter(&x_axis.label)
        .y_label_formatter(&|y| if *y >= 100.0 { format!("{y:.0}") } else { format!("{y:.2}") })
        .label_style(("sans-serif", 14))
        .draw()?;
    for (index, (name, points)) in series.into_iter().enumerate() {
        let style = colour(index).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.clone(), style))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, colour(index).filled())))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    println!("wrote {}", path.display());
    Ok(())
}

fn plot_throughput(results: &Results, batch: u64, out: &Path) {
    let series = SYSTEMS
        .iter()
        .map(|system| {
            let points = CLIENTS
                .iter()
                .filter_map(|&c| Some((c as f64, results.rate(system, c, batch)?)))
                .collect::<Vec<_>>();
            (system.to_string(), points)
        })
        .filter(|(_, points)| !points.is_empty())
        .collect();
    let caption = format!("Appends of {batch} event(s) per request: events/s");
    let path = out.join(format!("appends-{batch}.png"));
    let axes = (&CLIENTS_AXIS, "events/s (log)");
    if let Err(e) = plot(&path, &caption, axes, SeriesLabelPosition::LowerRight, series) {
        eprintln!("cannot draw {}: {e}", path.display());
    }
}

fn plot_latency(results: &Results, out: &Path) {
    for quantile in ["p50", "p99"] {
        let series = SYSTEMS
            .iter()
            .map(|system| {
                let points = CLIENTS
                    .iter()
                    .filter_map(|&c| {
                        let line = results.appends(system, c, 1)?;
                        Some((c as f64, line["latency_ms"][quantile].as_f64()?))
                    })
                    .collect::<Vec<_>>();
                (system.to_string(), points)
            })
            .filter(|(_, points)| !points.is_empty())
            .collect();
        let path = out.join(format!("latency-{quantile}.png"));
        let caption = format!("Single-event appends: {quantile} latency");
        let axes = (&CLIENTS_AXIS, "ms (log)");
        if let Err(e) = plot(&path, &caption, axes, SeriesLabelPosition::UpperLeft, series) {
            eprintln!("cannot draw {}: {e}", path.display());
        }
    }
}

/// Events stored, in millions; an empty log is drawn at 0.1.
const STORED_AXIS: XAxis = XAxis {
    desc: "events stored (millions; the leftmost point is an empty log)",
    range: 0.08..20.0,
    label: |x| if *x < 0.2 { "0".into() } else { format!("{x}") },
};

/// What a plot reads off a report line.
type Measure = fn(&Value) -> Option<f64>;

/// One plot per measure of `growth` lines, over the events stored.
fn plot_growth(growth: &Results, out: &Path) {
    let measures: [(&str, &str, Measure); 5] = [
        ("growth-appends", "Single-event appends at 64 clients: events/s", |l| {
            l["events_per_sec"].as_f64()
        }),
        ("growth-append-p99", "Single-event appends at 64 clients: p99 ms", |l| {
            l["latency_ms"]["p99"].as_f64()
        }),
        ("growth-stream-read-p99", "Stream reads (100 events), 8 clients: p99 ms", |l| {
            l["stream_read_ms"]["p99"].as_f64()
        }),
        ("growth-category-read-p99", "Category reads (100 events), 8 clients: p99 ms", |l| {
            l["category_read_ms"]["p99"].as_f64()
        }),
        ("growth-rss", "Server RSS, peak MB", |l| l["server_rss_mb"]["peak"].as_f64()),
    ];
    for (name, caption, measure) in measures {
        let series = ["store-sqlite", "store-postgres", "sqlite-raw", "postgres-raw"]
            .iter()
            .map(|system| {
                let mut points: Vec<(f64, f64)> = growth
                    .0
                    .iter()
                    .filter(|l| l["system"] == *system && l["stored"].is_u64())
                    .filter_map(|l| {
                        let stored = l["stored"].as_f64()? / 1e6;
                        Some((stored.max(0.1), measure(l)?))
                    })
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                (system.to_string(), points)
            })
            .filter(|(_, points)| !points.is_empty())
            .collect();
        let path = out.join(format!("{name}.png"));
        let axes = (&STORED_AXIS, "(log)");
        if let Err(e) = plot(&path, caption, axes, SeriesLabelPosition::LowerRight, series) {
            eprintln!("cannot draw {}: {e}", path.display());
        }
    }
}
