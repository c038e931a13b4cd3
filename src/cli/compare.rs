//! `socketserver compare`: every concurrency model as a child process under the same load, then
//! a table, `compare.svg` and `compare.json` (or, with `--idle N`, idle capacity and
//! `idle.json`).

use clap::ValueEnum;
use socketserver::Error;

use super::{seconds, LoadProtocolName, ModelName};

/// The arguments of `compare`.
#[derive(clap::Args)]
pub(crate) struct CompareArgs {
    /// The short run: 0.25 s of warm-up and 1 s measured per model and level (under a minute
    /// on two cores) instead of 1 s and 5 s.
    #[arg(long)]
    quick: bool,
    /// Measure idle capacity instead: hold this many idle connections against each model.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    idle: Option<u64>,
    /// Models to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "threads,pool,reactor,reactors,prefork"
    )]
    models: Vec<ModelName>,
    /// Concurrency levels (connections), in order.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256,1024,4096",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connections: Vec<u64>,
    /// CPUs for the server, taken from the first of those this process may use; the load gets
    /// the rest (default: half, at least one).
    #[arg(long)]
    server_cpus: Option<usize>,
    /// Seconds measured per run (overrides --quick's).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of warm-up per run (overrides --quick's).
    #[arg(long)]
    warmup: Option<f64>,
    /// Payload bytes per request (not http's).
    #[arg(long, default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    message_bytes: u64,
    /// The protocol served and loaded: echo (the default), http (GET / answered `Hello,
    /// World!`), ws (WebSocket echo of binary messages), line or frame. With --idle: echo or
    /// ws.
    #[arg(long, value_enum, default_value = "echo")]
    protocol: LoadProtocolName,
    /// Requests each connection keeps in flight (HTTP pipelining when above 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pipeline: u64,
    /// The servers' --max-connections: a model capped below a level shows it as failed.
    #[arg(long, default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Directory for compare.svg and compare.json (or idle.json).
    #[arg(long, default_value = "target/compare")]
    out: std::path::PathBuf,
    /// Serve and load over TLS (needs --tls-cert, --tls-key and --tls-ca).
    #[arg(long, requires_all = ["tls_cert", "tls_key", "tls_ca"])]
    tls: bool,
    /// With --tls: the servers' certificate chain (PEM; it must name 127.0.0.1).
    #[arg(long)]
    tls_cert: Option<std::path::PathBuf>,
    /// With --tls: the servers' private key (PEM).
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
    /// With --tls: the CA the load generator trusts (PEM).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
}

/// SIGINT or SIGTERM to `compare` stops the server it is measuring (and waits for it) before
/// this process exits, with the shell's status for death by that signal.
fn stop_servers_on_signal() -> socketserver::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|error| Error::io("installing signal handlers", error))?;
    std::thread::Builder::new()
        .name("socketserver-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("\nsocketserver: stopping the server under test");
                socketserver::compare::process::stop_all();
                std::process::exit(128 + signal);
            }
        })
        .map_err(|error| Error::io("starting the signal thread", error))?;
    Ok(())
}

/// Runs `compare`.
pub(crate) fn run(args: CompareArgs) -> socketserver::Result<()> {
    use socketserver::compare::{self, chart, idle, CompareConfig, ModelKind};
    stop_servers_on_signal()?;
    let program = std::env::current_exe()
        .map_err(|error| Error::io("finding this program to start servers", error))?;
    let mut config = if args.quick {
        CompareConfig::quick(program)
    } else {
        CompareConfig::new(program)
    };
    if let Some(count) = args.server_cpus {
        config.server_cpu_count(count)?;
    }
    if let Some(duration) = args.duration {
        config.duration = seconds(duration, "--duration")?;
    }
    if let Some(warmup) = args.warmup {
        config.warmup = seconds(warmup, "--warmup")?;
    }
    config.models = args
        .models
        .iter()
        .filter_map(|model| ModelKind::from_name(model.to_possible_value()?.get_name()))
        .collect();
    config.connections = args.connections.iter().map(|&n| n as usize).collect();
    config.message_bytes = args.message_bytes as usize;
    config.protocol = args.protocol.into();
    if config.protocol == socketserver::load::LoadProtocol::Pubsub {
        let before = config.models.len();
        config
            .models
            .retain(|model| !matches!(model, ModelKind::Prefork));
        if config.models.len() < before {
            eprintln!(
                "pub/sub does not run under prefork (its processes share no topics): left out"
            );
        }
    }
    config.pipeline = args.pipeline as usize;
    if args.tls {
        #[cfg(feature = "tls")]
        if let (Some(certificate), Some(private_key), Some(ca)) =
            (args.tls_cert, args.tls_key, args.tls_ca)
        {
            config.tls = Some(socketserver::compare::CompareTls {
                certificate,
                private_key,
                ca,
            });
        }
        #[cfg(not(feature = "tls"))]
        return Err(Error::Config(
            "this build has no TLS (built without the `tls` feature)".into(),
        ));
    }
    config.max_connections = args.max_connections as usize;
    std::fs::create_dir_all(&args.out)
        .map_err(|error| Error::io(format!("creating {}", args.out.display()), error))?;
    let mut progress = ProgressLine::new();
    if let Some(target) = args.idle {
        let result = idle::run(&config, target as usize, |step, steps, model| {
            progress.show(&format!(
                "[{step}/{steps}] {model}: {target} idle connections"
            ));
        })?;
        progress.clear();
        println!("{result}");
        let json = args.out.join("idle.json");
        write_file(&json, &result.to_json())?;
        println!("wrote {}", json.display());
        return Ok(());
    }
    let result = compare::run(&config, |step| {
        progress.show(&format!(
            "[{}/{}] {} at {} connections",
            step.step, step.steps, step.model, step.connections
        ));
    })?;
    progress.clear();
    println!("{result}");
    let (json, svg) = (args.out.join("compare.json"), args.out.join("compare.svg"));
    write_file(&json, &result.to_json())?;
    chart::write_svg(&result, &svg)?;
    println!("wrote {} and {}", svg.display(), json.display());
    Ok(())
}

fn write_file(path: &std::path::Path, text: &str) -> socketserver::Result<()> {
    std::fs::write(path, text)
        .map_err(|error| Error::io(format!("writing {}", path.display()), error))
}

/// A progress line on stderr: rewritten in place on a terminal, one line per step otherwise.
struct ProgressLine {
    terminal: bool,
}

impl ProgressLine {
    fn new() -> ProgressLine {
        use std::io::IsTerminal;
        ProgressLine {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, text: &str) {
        if self.terminal {
            eprint!("\r\x1b[K{text}");
        } else {
            eprintln!("{text}");
        }
    }

    fn clear(&mut self) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }
}
