//! `storectl`: the store server from a shell, for people and scripts, on the SDK's
//! `Client`. Tables and colour on a terminal, NDJSON when piped or with `--json`; exit
//! statuses scripts can test (see `output::EXIT_HELP`).

mod output;

use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use output::{EXIT_HELP, Output, exit_code};
use projection_sdk::protocol::{
    Category, DataSubject, Deletion, EventType, ExpectedRevision, NewEvent, Position, StreamName,
    StreamRetention, StreamRevision, Tag,
};
use projection_sdk::{CatalogPage, Client, Error, LogRead, Message, StreamRead, Target};
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "storectl", version, about = "The event store from a shell.", after_help = EXIT_HELP)]
struct Cli {
    /// The server.
    #[arg(long, env = "STORE_URL", default_value = "http://127.0.0.1:2114", global = true)]
    url: String,
    /// A bearer token (with an auth file on the server).
    #[arg(long, env = "STORE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// NDJSON output, also on a terminal (piped output is NDJSON anyway).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append one event to a stream.
    #[command(
        after_help = "Example: storectl append account-1 Deposited '{\"amount\": 100}' --expected no_stream"
    )]
    Append {
        /// The stream.
        stream: String,
        /// The event's type.
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// Its data, JSON; `-` or nothing reads it from standard input.
        data: Option<String>,
        /// `any`, `no_stream`, `stream_exists` or a revision.
        #[arg(long, default_value = "any")]
        expected: String,
        /// Metadata, JSON.
        #[arg(long)]
        metadata: Option<String>,
        /// A tag (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The data subject whose personal data this is.
        #[arg(long)]
        data_subject: Option<String>,
    },
    /// Read a stream, a category or the whole log; `--follow` goes on live.
    #[command(
        after_help = "Examples: storectl read account-1 --backward --limit 10\n          storectl read --category account --follow\n          storectl read --all --types Deposited --from 1000"
    )]
    Read(ReadArgs),
    /// List streams by name.
    #[command(after_help = "Example: storectl streams --prefix account- --limit 20")]
    Streams {
        /// Only names starting with it.
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// List categories with their stream and event counts.
    #[command(after_help = "Example: storectl categories")]
    Categories {
        #[command(flatten)]
        page: PageArgs,
    },
    /// List event types with their counts and schema versions.
    #[command(after_help = "Example: storectl types --json | jq .name")]
    Types {
        #[command(flatten)]
        page: PageArgs,
    },
    /// List consumers with their positions and lag.
    #[command(after_help = "Example: storectl consumers")]
    Consumers,
    /// Delete a stream (soft: an append recreates it; `--hard`: closed for good).
    #[command(after_help = "Example: storectl delete account-1 --expected 7")]
    Delete {
        /// The stream.
        stream: String,
        /// Closes the name for good.
        #[arg(long)]
        hard: bool,
        /// `any`, `stream_exists` or a revision.
        #[arg(long, default_value = "any")]
        expected: String,
    },
    /// Show a stream's metadata, or set its retention (every field given; the rest unset).
    #[command(
        after_help = "Examples: storectl metadata account-1\n          storectl metadata telemetry-7 --max-count 1000 --max-age-seconds 86400"
    )]
    Metadata {
        /// The stream.
        stream: String,
        /// Keep only the last this many events.
        #[arg(long)]
        max_count: Option<u64>,
        /// Keep only events younger than this.
        #[arg(long)]
        max_age_seconds: Option<u64>,
        /// Remove every event below this revision.
        #[arg(long)]
        truncate_before: Option<u64>,
    },
    /// Erase a data subject: its key is destroyed, its events read as erased.
    #[command(after_help = "Example: storectl erase customer-42")]
    Erase {
        /// The data subject.
        subject: String,
    },
    /// Write the store's export (NDJSON, admin) to a file or standard output.
    #[command(
        after_help = "Example: storectl export --out store.ndjson   (then: store-server import store.ndjson)"
    )]
    Export {
        /// The first position.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// The file (it must not exist); standard output without it.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Args)]
struct ReadArgs {
    /// The stream (or `--category`, `--all`).
    #[arg(required_unless_present_any = ["category", "all"], conflicts_with_all = ["category", "all"])]
    stream: Option<String>,
    /// A category.
    #[arg(long, conflicts_with = "all")]
    category: Option<String>,
    /// The whole log.
    #[arg(long)]
    all: bool,
    /// Where to start: a revision in a stream, a position otherwise.
    #[arg(long)]
    from: Option<u64>,
    /// At most this many events (without `--follow`).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Newest first.
    #[arg(long, conflicts_with = "follow")]
    backward: bool,
    /// After the backlog, go on with new events until Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// Only these event types (comma-separated; category and log).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Only events carrying all these tags (comma-separated; category and log).
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
}

#[derive(Args)]
struct PageArgs {
    /// Names after this one.
    #[arg(long)]
    after: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// Bad input on the command line: exit status 1, said on stderr.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn input<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> Result<T, Failure> {
    result.map_err(|e| Failure::Input(format!("{what}: {e}")))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.json);
    let mut client = Client::new(cli.url.trim_end_matches('/'));
    if let Some(token) = &cli.token {
        client = client.with_token(token);
    }
    match run(&client, cli.command, out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Store(err)) => {
            let detail = match &err {
                Error::Http(cause) => format!("{err}: {cause}"),
                other => other.to_string(),
            };
            eprintln!("storectl: {detail}");
            exit_code(&err)
        }
        Err(other) => {
            eprintln!("storectl: {other}");
            ExitCode::FAILURE
        }
    }
}

async fn run(client: &Client, command: Command, out: Output) -> Result<(), Failure> {
    match command {
        Command::Append { stream, event_type, data, expected, metadata, tags, data_subject } => {
            let stream = input("stream", StreamName::new(stream))?;
            let data = match data.as_deref() {
                None | Some("-") => std::io::read_to_string(std::io::stdin())?,
                Some(text) => text.to_owned(),
            };
            let data: Value = input("data", serde_json::from_str(&data))?;
            let mut event =
                input("data", NewEvent::new(input("type", EventType::new(event_type))?, &data))?;
            if let Some(metadata) = metadata {
                event.metadata =
                    Some(input("metadata", serde_json::value::RawValue::from_string(metadata))?);
            }
            for tag in tags {
                event.tags.push(input("tag", Tag::new(tag))?);
            }
            if let Some(subject) = data_subject {
                event = event.about(input("data subject", DataSubject::new(subject))?);
            }
            let expected = expected_revision(&expected)?;
            let result = client.append(&stream, expected, vec![event]).await?;
            let columns =
                ["stream", "first_revision", "last_revision", "first_position", "last_position"];
            out.rows(&columns, &[json!(result)]);
        }
        Command::Read(read) => self::read(client, read, out).await?,
        Command::Streams { prefix, page } => {
            let list = client.streams(&page.of(prefix)).await?;
            listing(out, &["name", "revision", "deleted"], &list.streams, list.next);
        }
        Command::Categories { page } => {
            let list = client.categories(&page.of(None)).await?;
            listing(out, &["name", "streams", "events"], &list.categories, list.next);
        }
        Command::Types { page } => {
            let list = client.types(&page.of(None)).await?;
            listing(out, &["name", "events", "schema_versions"], &list.types, list.next);
        }
        Command::Consumers => {
            let rows: Vec<Value> = client.consumers().await?.iter().map(|c| json!(c)).collect();
            out.rows(&["name", "position", "lag", "updated_at"], &rows);
        }
        Command::Delete { stream, hard, expected } => {
            let stream = input("stream", StreamName::new(stream))?;
            let deletion = if hard { Deletion::Hard } else { Deletion::Soft };
            client.delete_stream(&stream, expected_revision(&expected)?, deletion).await?;
            out.note(&format!(
                "deleted {} ({})",
                stream.as_str(),
                if hard { "hard" } else { "soft" }
            ));
        }
        Command::Metadata { stream, max_count, max_age_seconds, truncate_before } => {
            let stream = input("stream", StreamName::new(stream))?;
            let metadata =
                if max_count.is_none() && max_age_seconds.is_none() && truncate_before.is_none() {
                    client.stream_metadata(&stream).await?.ok_or(Error::StreamNotFound(stream))?
                } else {
                    let truncate_before = truncate_before.map(StreamRevision);
                    let retention = StreamRetention { max_count, max_age_seconds, truncate_before };
                    client.set_stream_retention(&stream, &retention).await?
                };
            out.value(&json!(metadata));
        }
        Command::Erase { subject } => {
            let subject = input("data subject", DataSubject::new(subject))?;
            client.erase_data_subject(&subject).await?;
            out.note(&format!("erased {}", subject.as_str()));
        }
        Command::Export { from, out: file } => export(client, Position(from), file).await?,
    }
    Ok(())
}

fn expected_revision(text: &str) -> Result<ExpectedRevision, Failure> {
    Ok(match text {
        "any" => ExpectedRevision::Any,
        "no_stream" => ExpectedRevision::NoStream,
        "stream_exists" => ExpectedRevision::StreamExists,
        revision => {
            ExpectedRevision::Exact(StreamRevision(input("--expected", revision.parse::<u64>())?))
        }
    })
}

/// A catalog page under `columns`, then, on stderr, how to ask for the next one.
fn listing<T: serde::Serialize>(
    out: Output,
    columns: &[&str],
    entries: &[T],
    next: Option<String>,
) {
    let rows: Vec<Value> = entries.iter().map(|entry| json!(entry)).collect();
    out.rows(columns, &rows);
    if let Some(next) = next {
        out.note(&format!("more: --after {next}"));
    }
}

impl PageArgs {
    fn of(self, prefix: Option<String>) -> CatalogPage {
        CatalogPage { prefix, after: self.after, limit: Some(self.limit) }
    }
}

async fn read(client: &Client, read: ReadArgs, out: Output) -> Result<(), Failure> {
    let types = read.types.into_iter().map(EventType::new).collect::<Result<Vec<_>, _>>();
    let types = input("--types", types)?;
    let tags = input("--tags", read.tags.into_iter().map(Tag::new).collect::<Result<Vec<_>, _>>())?;
    if read.follow {
        let target = match (&read.stream, &read.category) {
            (Some(stream), _) => Target::Stream(input("stream", StreamName::new(stream.clone()))?),
            (None, Some(category)) => Target::Category {
                category: input("category", Category::new(category.clone()))?,
                types,
                tags,
            },
            (None, None) => Target::All { types, tags },
        };
        // `--from` is where to start: the subscription delivers what comes after it.
        let after = Position(read.from.map_or(0, |from| from.saturating_sub(1)));
        let mut subscription = client.subscribe(target, after);
        let stopped = tokio::signal::ctrl_c();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                message = subscription.next() => match message {
                    Some(Ok(Message::Event(event))) => out.event(&json!(event)),
                    Some(Ok(Message::CaughtUp(head))) if !out.json => out.note(&format!("— caught up at position {head}, following —")),
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Err(err.into()),
                    None => return Ok(()),
                },
                _ = &mut stopped => return Ok(()),
            }
        }
    }
    let events = match (&read.stream, &read.category) {
        (Some(stream), _) => {
            let stream = input("stream", StreamName::new(stream.clone()))?;
            let mut request =
                if read.backward { StreamRead::backward() } else { StreamRead::forward() };
            request = request.limit(read.limit);
            if let Some(from) = read.from {
                request = request.from(StreamRevision(from));
            }
            client
                .read_stream(&stream, &request)
                .await?
                .ok_or(Error::StreamNotFound(stream))?
                .events
        }
        (None, category) => {
            let mut request = if read.backward { LogRead::backward() } else { LogRead::forward() };
            request = request.limit(read.limit).types(types).tags(tags);
            if let Some(from) = read.from {
                request = request.from(Position(from));
            }
            match category {
                Some(category) => {
                    let category = input("category", Category::new(category.clone()))?;
                    client.read_category(&category, &request).await?.events
                }
                None => client.read_all(&request).await?.events,
            }
        }
    };
    for event in &events {
        out.event(&json!(event));
    }
    Ok(())
}

/// The export, line by line, with a count of events on stderr while it runs on a terminal.
async fn export(
    client: &Client,
    from: Position,
    file: Option<std::path::PathBuf>,
) -> Result<(), Failure> {
    let mut sink: Box<dyn Write> = match &file {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create_new(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let progress = std::io::stderr().is_terminal();
    let mut export = client.export(from, false).await?;
    let (mut events, mut ended) = (0u64, false);
    while let Some(line) = export.next_line().await? {
        writeln!(sink, "{line}")?;
        if line.starts_with("{\"event\"") {
            events += 1;
            if progress && events % 10_000 == 0 {
                eprint!("\rexported {events} events");
            }
        }
        ended |= line.starts_with("{\"end\"");
    }
    sink.flush()?;
    if progress {
        eprintln!("\rexported {events} events");
    }
    if !ended {
        return Err(Failure::Input("the export was cut short (no end line): run it again".into()));
    }
    Ok(())
}
