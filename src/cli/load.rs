//! `socketserver load`: puts a server under load for a bounded time and reports throughput and
//! latency (closed loop, or open loop at a fixed rate).

use socketserver::load::LoadConfig;

use super::{seconds, LoadProtocolName};

/// The arguments of `load`.
#[derive(clap::Args)]
pub(crate) struct LoadArgs {
    /// The server to load.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: std::net::SocketAddr,
    /// The request format (echo, line, frame: each answer is the request itself; http: GET of
    /// --path, answered by a 2xx with a Content-Length body; ws: an upgrade of --path, then
    /// binary messages echoed).
    #[arg(long, value_enum, default_value = "echo")]
    protocol: LoadProtocolName,
    /// Requests each connection keeps in flight: 1 waits for every answer; more pipelines them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pipeline: u64,
    /// The path an http load requests (or a ws load upgrades).
    #[arg(long, default_value = "/")]
    path: String,
    /// Connections to open.
    #[arg(long, default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connections: u64,
    /// Seconds of measurement, after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Payload bytes per request.
    #[arg(long, default_value_t = 64)]
    message_bytes: usize,
    /// Open loop at this many requests per second in all (latency from each request's intended
    /// send time); without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Speak TLS to the server (naming it by its IP address, which its certificate must
    /// carry), trusting the CA in --tls-ca.
    #[arg(long, requires = "tls_ca")]
    tls: bool,
    /// With --tls: the CA to trust (PEM).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls: present this client certificate (PEM; with --tls-key), for mTLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

/// Runs `load`.
pub(crate) fn run(args: LoadArgs) -> socketserver::Result<()> {
    #[cfg(feature = "tls")]
    let tls = connector(&args)?;
    let config = LoadConfig {
        addr: args.addr,
        protocol: args.protocol.into(),
        pipeline: args.pipeline as usize,
        http_path: args.path,
        connections: args.connections as usize,
        duration: seconds(args.duration, "--duration")?,
        warmup: seconds(args.warmup, "--warmup")?,
        message_bytes: args.message_bytes,
        rate: args.rate,
        #[cfg(feature = "tls")]
        tls,
        ..LoadConfig::default()
    };
    #[cfg(not(feature = "tls"))]
    if args.tls {
        return Err(socketserver::Error::Config(
            "this build has no TLS (built without the `tls` feature)".into(),
        ));
    }
    let report = socketserver::load::run(&config)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(())
}

/// The TLS client the flags ask for, if any.
#[cfg(feature = "tls")]
fn connector(args: &LoadArgs) -> socketserver::Result<Option<socketserver::tls::TlsConnector>> {
    use socketserver::tls::TlsConnector;
    let (true, Some(ca)) = (args.tls, &args.tls_ca) else {
        return Ok(None);
    };
    Ok(Some(match (&args.tls_cert, &args.tls_key) {
        (Some(certificate), Some(key)) => {
            TlsConnector::with_client_certificate(ca, certificate, key)?
        }
        _ => TlsConnector::trusting(ca)?,
    }))
}
