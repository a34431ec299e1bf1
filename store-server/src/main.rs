//! `store-server`: parses flags, binds, serves until Ctrl-C or SIGTERM.

use clap::Parser;
use std::process::ExitCode;
use store_server::config::{Cli, Command, KeyCommand, LogFormat, TokenCommand};
use store_server::tools::{copy::copy as copy_store, remote::Source, verify};
use tracing::error;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colour only on a terminal: a log file or a collector gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    // A file-size limit (`ulimit -f`) sends SIGXFSZ, whose default is to kill the process.
    // Handled, the write fails instead (EFBIG), and the append is refused with a 503 as on a
    // full disk; nothing needs doing when the signal arrives.
    #[cfg(unix)]
    let _file_size_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ));
    let config = match cli.config() {
        Ok(config) => config,
        Err(err) => {
            error!(cause = %store_server::error_chain(&err), "store-server cannot start");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.clone().unwrap_or(Command::Serve) {
        Command::Token(TokenCommand::New { name, roles, streams }) => {
            match store_server::auth::new_token(&name, &roles, streams.as_deref()) {
                Ok((token, entry)) => {
                    println!(
                        "# The token, shown this once (the server keeps only its SHA-256):\n# {token}\n\n{entry}"
                    );
                    Ok(())
                }
                Err(err) => Err(err.into()),
            }
        }
        Command::Key(KeyCommand::New) => {
            println!("{}", store_server::crypto::MasterKey::generate_hex());
            Ok(())
        }
        Command::Key(KeyCommand::Rotate { old, new }) => rotate(&config, &old, &new).await,
        Command::Backup { to } => backup(&config, &to),
        Command::Import { file } => import(&config, &file).await,
        Command::Verify { url, token } => verify(&config, url, token).await,
        Command::Copy { from, token, to_data_dir, to_database_url, follow } => {
            let target = Cli {
                data_dir: to_data_dir.unwrap_or_default(),
                database_url: to_database_url,
                ..cli.clone()
            };
            match target.config() {
                Ok(target) => copy(&from, token, &target, follow).await,
                Err(err) => Err(err.into()),
            }
        }
        Command::Migrate => store_server::store::open(&config.storage, None)
            .await
            .map(|_| tracing::info!("migrations applied"))
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>),
        Command::Serve => match tokio::net::TcpListener::bind(cli.listen).await {
            Ok(listener) => store_server::server::run(listener, config, shutdown_signal())
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error>),
            Err(err) => Err(format!("cannot listen on {}: {err}", cli.listen).into()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(cause = %store_server::error_chain(&*err), "store-server failed");
            ExitCode::FAILURE
        }
    }
}

/// `store-server key rotate`: re-wraps every subject key, then says how many.
async fn rotate(
    config: &store_server::config::Config,
    old: &std::path::Path,
    new: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use store_server::crypto::MasterKey;
    let (old, new) = (MasterKey::read(old)?, MasterKey::read(new)?);
    if old.id() == new.id() {
        return Err("--old and --new hold the same key".into());
    }
    let store = store_server::store::open(&config.storage, None).await?;
    let keys = store.rotate_key(&old, &new).await?;
    tracing::info!(
        keys,
        "every data subject key is wrapped by the new key file; start the servers with it"
    );
    Ok(())
}

/// `store-server backup`: a consistent copy of a SQLite store, taken online.
fn backup(
    config: &store_server::config::Config,
    to: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let store_server::store::Options::Sqlite { data_dir, .. } = &config.storage else {
        return Err("backup copies a SQLite store; for PostgreSQL, see the README (pg_dump)".into());
    };
    let events = store_server::store::sqlite_backup(data_dir, to)?;
    tracing::info!(events, to = %to.display(), "backup written");
    Ok(())
}

/// `store-server import`: an export into empty storage, with its progress on stderr.
async fn import(
    config: &store_server::config::Config,
    file: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::BufReader;
    let store = store_server::store::open(&config.storage, None).await?;
    let reader: Box<dyn std::io::BufRead + Send> = match file.to_str() {
        Some("-") => Box::new(BufReader::new(std::io::stdin())),
        _ => Box::new(BufReader::new(std::fs::File::open(file)?)),
    };
    let progress = |events: u64| {
        if events % 100_000 == 0 {
            tracing::info!(events, "importing");
        }
    };
    let imported = store_server::store::import::import(&*store, reader, progress).await?;
    tracing::info!(
        events = imported.events,
        carried_on_after = imported.skipped,
        "import complete"
    );
    Ok(())
}

/// `store-server verify`: the report on stdout; a violation fails the command.
async fn verify(
    config: &store_server::config::Config,
    url: Option<String>,
    token: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let origin = match url {
        Some(url) => verify::Origin::Server(Source::new(&url, token)),
        None => verify::Origin::Storage(store_server::store::open(&config.storage, None).await?),
    };
    let report = verify::verify(&origin, config.encryption.clone()).await?;
    for violation in &report.violations {
        println!("violation: {violation}");
    }
    if report.violations_found > report.violations.len() as u64 {
        println!("… {} violations in all", report.violations_found);
    }
    println!("events: {}\nstreams: {}\nhead: {}", report.events, report.streams, report.head);
    if report.opened + report.erased > 0 {
        println!(
            "sealed events opened: {}\nsealed events erased: {}",
            report.opened, report.erased
        );
    }
    println!(
        "log digest: sha256:{}\nstate digest: sha256:{}",
        report.log_digest, report.state_digest
    );
    if report.is_sound() {
        Ok(())
    } else {
        Err(format!("{} violations", report.violations_found).into())
    }
}

/// `store-server copy`: progress on stderr; with `--follow`, until Ctrl-C or SIGTERM.
async fn copy(
    from: &str,
    token: Option<String>,
    target: &store_server::config::Config,
    follow: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = store_server::store::open(&target.storage, None).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping at the next sync");
        let _ = stop.send(true);
    });
    let started = std::time::Instant::now();
    let mut last_said = started;
    let progress = |done: &store_server::tools::copy::Progress, synced: bool| {
        let now = std::time::Instant::now();
        if synced && follow || now.duration_since(last_said).as_secs() >= 5 {
            last_said = now;
            let rate = done.events as f64 / started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(events = done.events, head = done.head, rate = rate as u64, "copying");
        }
    };
    let source = Source::new(from, token);
    let done = copy_store(&source, &*store, follow, stopped, progress).await?;
    tracing::info!(
        events = done.events,
        head = done.head,
        resumed = done.resumed,
        "copy complete: a server may start on it"
    );
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
