//! TLS as a layer between the socket and the protocol: rustls driven sans-IO, so the protocols
//! above it see plaintext exactly as before, on the reactor and on the blocking drivers alike.
//!
//! # Where the layer sits
//!
//! A server given a [`TlsAcceptor`] wraps every accepted socket in the layer before anything
//! else happens (`net::Stream::Tls`). The reactor knows three things of a layered stream and
//! nothing more: it may still be *opening* (the handshake), during which nothing is fed to the
//! protocol and `on_open` has not been called; it may *hold output* of its own (records rustls
//! has made and the socket has not taken), which counts as pending output for writable interest,
//! the watermarks and the close; and it may carry the peer's [`PeerIdentity`], which the
//! protocol reads through its context. Which bytes go where is this room's business:
//!
//! * **Reading** asks rustls for plaintext first; when it has none, it reads records from the
//!   socket (`read_tls`), processes them (`process_new_packets`) and asks again, until the
//!   caller's buffer is full or the socket would block. A short read therefore still means the
//!   socket is drained, which the reactor's edge-triggered reading relies on.
//! * **Writing** first pushes out what rustls already holds; if the socket takes it, the new
//!   plaintext is encrypted (several small slices joined into one record) and pushed in turn.
//!   What the socket does not take stays in rustls, bounded by
//!   [`Config::tls_buffer_bytes`](crate::Config::tls_buffer_bytes), and the reactor is asked
//!   for writability.
//! * **Failing**: when rustls rejects what the peer sent, it has queued the alert that says
//!   why; the layer sends it before the connection closes. A plain-HTTP request on the TLS port
//!   is answered `400` in clear text instead. Every failed handshake is counted by reason
//!   ([`TlsFailure`](crate::metrics::TlsFailure)).
//! * **Closing**: a graceful close sends `close_notify` before the socket's write side is shut.
//!   A peer that closes without one is taken as an ordinary end of stream, as browsers do; the
//!   HTTP framing above (lengths, chunks) is what tells a cut answer from a whole one.
//!
//! # Reload
//!
//! [`TlsAcceptor::reload`] (and SIGHUP, with [`TlsAcceptor::reload_on_sighup`]) reads the
//! certificate, key, client CA and CRL again. New handshakes use the new configuration;
//! connections already open keep theirs; a file that is missing or broken is refused with a
//! logged error, and the configuration in use stays. Session tickets and the session cache
//! survive a reload, so clients keep resuming.

#[cfg(feature = "tls")]
mod acceptor;
mod identity;
#[cfg(feature = "tls")]
mod stream;

#[cfg(feature = "tls")]
pub(crate) use acceptor::ClientTls;
#[cfg(feature = "tls")]
pub use acceptor::{
    ClientAuth, ReloadOnSighup, TlsAcceptor, TlsConnector, TlsSettings, TlsVersions,
};
pub use identity::PeerIdentity;
#[cfg(feature = "tls")]
pub(crate) use stream::{BlockingTls, TlsStream};
