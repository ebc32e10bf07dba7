//! The `sluice` command line: `serve` (the default), `check-config`, `bench`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::{DEMO_CONFIG, Settings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sluice: a Server-Sent Events edge proxy.
///
/// Without a subcommand it serves (`sluice serve`).
#[derive(Parser, Debug)]
#[command(name = "sluice", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve streams (the default). Without --config: the built-in demo on
    /// 127.0.0.1:8080 with simulated odds and ticker topics and one demo key
    /// per tier.
    Serve {
        /// The configuration file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: Option<String>,
    },
    /// Validate a configuration file: exit 0, or 1 with the error's line and
    /// column. Warns about example secrets and the demo source.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// The SSE load generator (`sluice bench --help` for its options).
    #[command(
        disable_help_flag = true,
        override_help = sluice::bench::USAGE,
    )]
    Bench {
        /// Options of the load generator, parsed by it.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; a usage
            // error is a start-up failure (exit 1, SPEC §5).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    sluice::logging::init();
    match cli.command {
        None => serve(None),
        Some(Cmd::Serve { config }) => serve(config.as_deref()),
        Some(Cmd::CheckConfig { file }) => check_config(&file),
        Some(Cmd::Bench { args }) => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bench(&args)
        }
    }
}

fn check_config(file: &str) -> ExitCode {
    match load(file) {
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
            let problems = summary.problems();
            for p in &problems {
                eprintln!("sluice bench: FAILED: {p}");
            }
            if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
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
