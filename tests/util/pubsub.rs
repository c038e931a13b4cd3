//! A pub/sub client for the tests: the wire protocol's JSON over an independent WebSocket
//! client (tungstenite), every read bounded by [`TIMEOUT`](super::TIMEOUT).

use std::net::{SocketAddr, TcpStream};

use serde_json::{json, Value};

use super::connect;

/// A pub/sub client: JSON in, JSON out, every read bounded by [`TIMEOUT`](super::TIMEOUT).
pub struct Client {
    pub socket: tungstenite::WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::over(connect(addr), addr)
    }

    pub fn over(stream: TcpStream, addr: SocketAddr) -> Client {
        Client::over_path(stream, addr, "/")
    }

    pub fn over_path(stream: TcpStream, addr: SocketAddr, path: &str) -> Client {
        let (socket, _) =
            tungstenite::client(format!("ws://{addr}{path}"), stream).expect("the handshake");
        Client { socket }
    }

    pub fn send(&mut self, message: Value) {
        self.send_text(&message.to_string());
    }

    pub fn send_text(&mut self, text: &str) {
        self.socket
            .send(tungstenite::Message::text(text))
            .expect("send");
    }

    /// The next JSON message from the server.
    pub fn next(&mut self) -> Value {
        loop {
            match self.socket.read().expect("a message from the server") {
                tungstenite::Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("JSON from the server")
                }
                tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The next message, which must be of `kind`.
    pub fn expect(&mut self, kind: &str) -> Value {
        let message = self.next();
        assert_eq!(message["type"], kind, "{message}");
        message
    }

    pub fn subscribe(&mut self, topic: &str, from: Option<Value>) -> Value {
        let mut message = json!({"type": "subscribe", "topic": topic});
        if let Some(from) = from {
            message["from"] = from;
        }
        self.send(message);
        self.expect("subscribed")
    }

    /// Publishes and waits for the ack; returns the offset.
    pub fn publish(&mut self, topic: &str, data: &str, id: Option<&str>) -> u64 {
        let mut message = json!({"type": "publish", "topic": topic, "data": data});
        if let Some(id) = id {
            message["id"] = json!(id);
        }
        self.send(message);
        let ack = self.expect("ack");
        if let Some(id) = id {
            assert_eq!(ack["id"], id);
        }
        ack["offset"].as_u64().expect("an offset")
    }

    /// Reads `count` messages of `topic`: (offset, data) each.
    pub fn messages(&mut self, count: usize) -> Vec<(u64, String)> {
        (0..count)
            .map(|_| {
                let message = self.expect("message");
                (
                    message["offset"].as_u64().expect("offset"),
                    message["data"].as_str().expect("data").to_string(),
                )
            })
            .collect()
    }
}
