//! The `sluice` command line: `serve` (the default), `check-config`, `bench`.

use std::process::ExitCode;

use sluice::config::{DEMO_CONFIG, Settings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: sluice [serve [--config FILE]] | check-config FILE | bench ...";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["serve"] => serve(None),
        ["serve", "--config", file] | ["serve", "-c", file] => serve(Some(file)),
        ["check-config", file] => match load(file) {
            Ok(settings) => {
                for w in settings.warnings() {
                    eprintln!("{file}: warning: {w}");
                }
                println!("{file}: ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        ["bench", rest @ ..] => bench(rest),
        ["-h"] | ["--help"] | ["help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(1)
        }
    }
}

fn bench(args: &[&str]) -> ExitCode {
    if args.iter().any(|a| *a == "-h" || *a == "--help") {
        println!("{}", sluice::bench::USAGE);
        return ExitCode::SUCCESS;
    }
    let args = match sluice::bench::Args::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let json = args.json;
    match sluice::bench::run(args) {
        Ok(summary) => {
            if json {
                println!("{}", summary.to_json());
            } else {
                print!("{}", summary.to_text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(file: &str) -> Result<Settings, String> {
    let src = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    Settings::from_toml(&src).map_err(|e| format!("{file}: {e}"))
}

/// A panic anywhere in the server is a bug that may have left a worker's
/// listener or the coalescer dead: log it with the thread's name and exit
/// non-zero at once, so that systemd (`Restart=on-failure`) restarts the
/// service instead of a half-dead process answering health checks.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!(thread = name, "thread {name} panicked: {info}; exiting");
        default(info);
        std::process::exit(101);
    }));
}

fn serve(config: Option<&str>) -> ExitCode {
    exit_on_panic();
    let settings = match config {
        Some(file) => load(file),
        None => Settings::from_toml(DEMO_CONFIG).map_err(|e| format!("built-in demo config: {e}")),
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    // The built-in demo is meant to have its demo keys and feed.
    if let Some(file) = config {
        for w in settings.warnings() {
            tracing::warn!("{file}: {w}");
        }
    }
    match sluice::server::run(settings, config.map(std::path::PathBuf::from)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::from(1)
        }
    }
}
