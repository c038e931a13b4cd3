//! An HTTPS server that authenticates its clients with certificates (mTLS) and authorises each
//! route by who they are: an allow-list of names per route, checked against the identity the
//! TLS layer verified and hands to every request.
//!
//! ```text
//! cargo run --release --example mtls_allowlist -- --listen 127.0.0.1:8443 \
//!     --cert server.pem --key server.key --client-ca ca.pem [--crl crl.pem]
//! curl --cacert ca.pem --cert alice.pem --key alice.key https://localhost:8443/admin
//! ```
//!
//! `/` answers any client with a valid certificate (and says who it is); `/reports` only
//! `alice` and `bob`; `/admin` only `alice`. A name matches the certificate's common name or
//! one of its subject alternative names. A client with a valid certificate that is not on a
//! route's list gets 403; the TLS layer itself refuses clients with no certificate, one from
//! another CA, a revoked one or an expired one, before any route runs.

use socketserver::protocol::http::{HttpLimits, Request, Response, Router};
use socketserver::protocol::Http;
use socketserver::tls::{ClientAuth, TlsAcceptor, TlsSettings};
use socketserver::{Config, Error, Server};

/// Runs `handler` only for clients whose certificate names one of `names`.
fn allow(
    names: &'static [&'static str],
    handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
) -> impl Fn(&Request) -> Response + Send + Sync + 'static {
    move |request| match request.peer_identity() {
        Some(identity) if names.iter().any(|name| identity.has_name(name)) => handler(request),
        Some(identity) => Response::text(403, format!("{} may not\n", identity.subject)),
        // Only with `ClientAuth::Optional`: a client that sent no certificate.
        None => Response::text(401, "a client certificate is required\n"),
    }
}

fn usage() -> Error {
    Error::Config(
        "usage: mtls_allowlist [--listen ADDR] --cert FILE --key FILE --client-ca FILE \
         [--crl FILE]"
            .into(),
    )
}

fn main() -> socketserver::Result<()> {
    env_logger::init();
    let mut listen = "127.0.0.1:8443".to_string();
    let (mut cert, mut key, mut client_ca, mut crl) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(usage)?;
        match arg.as_str() {
            "--listen" => listen = value,
            "--cert" => cert = Some(value),
            "--key" => key = Some(value),
            "--client-ca" => client_ca = Some(value),
            "--crl" => crl = Some(value),
            _ => return Err(usage()),
        }
    }
    let (Some(cert), Some(key), Some(client_ca)) = (cert, key, client_ca) else {
        return Err(usage());
    };
    let mut settings = TlsSettings::new(cert, key)
        .client_ca(client_ca, ClientAuth::Required)
        .alpn_http1();
    if let Some(crl) = crl {
        settings = settings.crl(crl);
    }
    let acceptor = TlsAcceptor::new(settings)?;
    // SIGHUP reloads the certificate, key, client CA and CRL (a new CRL revokes at once).
    let _reload = acceptor.reload_on_sighup()?;

    let router = std::sync::Arc::new(
        Router::new()
            .get("/", |request| {
                let who = request
                    .peer_identity()
                    .map_or("nobody".to_string(), |identity| identity.subject.clone());
                Response::text(200, format!("hello, {who}\n"))
            })
            .get(
                "/reports",
                allow(&["alice", "bob"], |_| Response::text(200, "the reports\n")),
            )
            .get(
                "/admin",
                allow(&["alice"], |_| Response::text(200, "the admin page\n")),
            ),
    );
    let server = Server::bind_with(listen.as_str(), Config::default())?.tls(acceptor);
    println!("listening on https://{}", server.local_addr());
    let limits = HttpLimits::from_config(server.config());
    server.serve(move || Http::new(router.clone(), limits))
}
