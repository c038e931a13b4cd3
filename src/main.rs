//! The `socketserver` command: `serve`, `load`, `compare`, `subscribe` and `publish`, each a thin layer of argument
//! parsing over the library (see [`cli`]). `RUST_LOG` sets the log level (env_logger).

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The clients say at info when they reconnect: what someone watching a pipe wants to see.
    let default_level = match cli.command {
        Command::Subscribe(_) | Command::Publish(_) => "warn,socketserver=info",
        _ => "warn",
    };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    if let LogFormat::Json = cli.log_format {
        logger.format(|out, record| {
            use std::io::Write;
            let line = serde_json::json!({
                "ts": out.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(out, "{line}")
        });
    }
    logger.init();
    cli::raise_descriptor_limit();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(*args),
        Command::Load(args) => cli::load::run(args),
        Command::Compare(args) => cli::compare::run(args),
        Command::Subscribe(args) => cli::client::subscribe(args),
        Command::Publish(args) => cli::client::publish(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("socketserver: {error}");
            ExitCode::FAILURE
        }
    }
}
