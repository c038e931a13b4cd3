//! Who the client is behind HTTP proxies: `Forwarded` (RFC 7239) or `X-Forwarded-For`,
//! believed only when the connection comes from a proxy the server trusts, and then only as
//! far back as the chain of trusted proxies goes (each proxy appends the address it saw, so
//! the rightmost address a trusted proxy did not write is the first one nobody can forge).

use std::net::IpAddr;

use ipnet::IpNet;

use super::Request;

/// The client's address for `request` arriving from `peer`: `peer` itself unless `peer` is in
/// `trusted`, in which case the forwarding headers are walked from the right past every
/// trusted proxy. A header that cannot be read is not believed.
pub(crate) fn client_ip(request: &Request, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| {
        trusted
            .iter()
            .any(|range| range.contains(&ip.to_canonical()))
    };
    if !is_trusted(&peer) {
        return peer;
    }
    // `Forwarded` supersedes `X-Forwarded-For` where both are sent.
    let chain: Option<Vec<IpAddr>> = if request.header("forwarded").is_some() {
        forwarded_chain(request)
    } else if request.header("x-forwarded-for").is_some() {
        x_forwarded_for_chain(request)
    } else {
        return peer;
    };
    let Some(chain) = chain else {
        return peer;
    };
    let mut client = peer;
    for hop in chain.iter().rev() {
        client = *hop;
        if !is_trusted(hop) {
            break;
        }
    }
    client
}

/// Every `X-Forwarded-For` address, left to right, over all its fields; `None` if one is not
/// an address.
fn x_forwarded_for_chain(request: &Request) -> Option<Vec<IpAddr>> {
    let mut chain = Vec::new();
    for value in request.header_values("x-forwarded-for") {
        for item in std::str::from_utf8(value).ok()?.split(',') {
            chain.push(item.trim().parse().ok()?);
        }
    }
    Some(chain)
}

/// Every `for=` of `Forwarded`, left to right; `None` if one cannot be read (an obfuscated
/// `_name` or `unknown` cannot be believed as an address either).
fn forwarded_chain(request: &Request) -> Option<Vec<IpAddr>> {
    let mut chain = Vec::new();
    for value in request.header_values("forwarded") {
        for element in std::str::from_utf8(value).ok()?.split(',') {
            for pair in element.split(';') {
                let Some((name, node)) = pair.trim().split_once('=') else {
                    continue;
                };
                if name.eq_ignore_ascii_case("for") {
                    chain.push(forwarded_node(node)?);
                }
            }
        }
    }
    Some(chain)
}

/// A `for=` node: `192.0.2.60`, `"192.0.2.60:4711"`, `"[2001:db8::1]"`, `"[2001:db8::1]:4711"`.
fn forwarded_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let host = node.rsplit_once(':').map_or(node, |(host, _port)| host);
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ranges(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|range| range.parse().unwrap()).collect()
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_proxies_and_only_as_far_as_they_go() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let request = Request::new("GET", "/").with_header("X-Forwarded-For", "203.0.113.5");
        assert_eq!(
            client_ip(&request, ip("10.1.1.1"), &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(&request, ip("198.51.100.9"), &trusted),
            ip("198.51.100.9"),
            "an untrusted peer's header is not believed"
        );
        // A client that writes its own header: the proxy appends what it saw, which wins.
        let spoofed = Request::new("GET", "/")
            .with_header("X-Forwarded-For", "1.2.3.4, 203.0.113.5")
            .with_header("X-Forwarded-For", "10.2.2.2");
        assert_eq!(
            client_ip(&spoofed, ip("10.1.1.1"), &trusted),
            ip("203.0.113.5")
        );
        let garbage = Request::new("GET", "/").with_header("X-Forwarded-For", "not-an-ip");
        assert_eq!(
            client_ip(&garbage, ip("10.1.1.1"), &trusted),
            ip("10.1.1.1")
        );
        let none = Request::new("GET", "/");
        assert_eq!(client_ip(&none, ip("10.1.1.1"), &trusted), ip("10.1.1.1"));
    }

    #[test]
    fn forwarded_is_read_with_ports_quotes_and_ipv6_and_preferred() {
        let trusted = ranges(&["10.0.0.0/8", "::1/128"]);
        let request = Request::new("GET", "/")
            .with_header(
                "Forwarded",
                r#"for="[2001:db8::17]:4711";proto=https, for=10.0.0.2"#,
            )
            .with_header("X-Forwarded-For", "192.0.2.1");
        assert_eq!(client_ip(&request, ip("::1"), &trusted), ip("2001:db8::17"));
        let with_port = Request::new("GET", "/").with_header("Forwarded", r#"for="192.0.2.60:80""#);
        assert_eq!(
            client_ip(&with_port, ip("10.0.0.1"), &trusted),
            ip("192.0.2.60")
        );
        let hidden = Request::new("GET", "/").with_header("Forwarded", "for=_hidden");
        assert_eq!(client_ip(&hidden, ip("10.0.0.1"), &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(&with_port, ip("::ffff:10.0.0.1"), &trusted),
            ip("192.0.2.60"),
            "a v4-mapped peer is the v4 address it maps"
        );
    }
}
