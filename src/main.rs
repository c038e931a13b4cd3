//! The `socketserver` command: `serve`, `load` and `compare`, each a thin layer of argument
//! parsing over the library (see [`cli`]). `RUST_LOG` sets the log level (env_logger).

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    cli::raise_descriptor_limit();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::Load(args) => cli::load::run(args),
        Command::Compare(args) => cli::compare::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("socketserver: {error}");
            ExitCode::FAILURE
        }
    }
}
