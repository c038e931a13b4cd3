//! The rooms of `src/` import one way: a plain text check of every `crate::…` path each file
//! names (in `use` lines, braces expanded, and inline), with `self::` and `super::` resolved and
//! re-exports followed to where they are defined. The rules below are the architecture's:
//!
//! * the reactor (`reactor/`) knows no protocol above the trait, no server, no blocking driver;
//! * the reactor's parts (`buffer`, `token`, `timer`, `completions`), which protocols and every
//!   driver use, import nothing from the crate at all;
//! * the blocking drivers share the protocols and the lifecycle with the reactor, not the loop;
//! * protocols know no socket, no driver and no server;
//! * the lifecycle room sits below all three;
//! * pub/sub sits on the protocols (a WebSocket handler) and knows no socket, loop or server;
//! * the client runs the reactor without a listener and the protocols on it, and knows no
//!   server and no blocking server driver;
//! * TLS is part of the transport: it wraps a socket of `net` and knows no loop, protocol,
//!   driver or server (the identity it hands protocols is plain data they may read).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One rule: files whose module path starts with `room` may import only what starts with one
/// of `allowed` (their own room always). Where two rules' rooms hold a file, the narrower one
/// alone applies.
struct Rule {
    room: &'static str,
    allowed: &'static [&'static str],
}

/// What protocols may use besides their own room.
const PROTOCOL_ALLOWED: &[&str] = &[
    "crate::config",
    "crate::error",
    "crate::lifecycle",
    "crate::metrics",
    "crate::worker",
    "crate::reactor::buffer",
    "crate::reactor::token",
    "crate::reactor::timer",
    "crate::reactor::completions",
    // Who a TLS peer proved to be: plain data, no socket.
    "crate::tls::identity",
];

const RULES: &[Rule] = &[
    Rule {
        room: "crate::reactor",
        allowed: &[
            "crate::admission",
            "crate::config",
            "crate::error",
            "crate::lifecycle",
            "crate::metrics",
            "crate::net",
            "crate::worker",
            // The protocol contract, not a protocol.
            "crate::protocol::Protocol",
            "crate::protocol::Context",
            "crate::protocol::CloseRequest",
            "crate::protocol::Offload",
            "crate::protocol::PeerSource",
            "crate::protocol::TimerRequest",
            "crate::protocol::Wishes",
            "crate::protocol::datagram",
            "crate::protocol::datagram_handler",
        ],
    },
    Rule {
        room: "crate::reactor::buffer",
        allowed: &[],
    },
    Rule {
        room: "crate::reactor::token",
        allowed: &[],
    },
    Rule {
        room: "crate::reactor::timer",
        allowed: &[],
    },
    Rule {
        room: "crate::reactor::completions",
        allowed: &[],
    },
    Rule {
        room: "crate::blocking",
        allowed: &[
            "crate::config",
            "crate::error",
            "crate::lifecycle",
            "crate::metrics",
            "crate::net",
            "crate::protocol",
            "crate::reactor::buffer",
            "crate::reactor::token",
            "crate::reactor::timer",
            "crate::reactor::completions",
            // A blocking connection is a mailbox of its own: it takes notices directly.
            "crate::worker::DirectDelivery",
            "crate::worker::Mailbox",
            "crate::worker::Notice",
        ],
    },
    Rule {
        room: "crate::protocol",
        allowed: PROTOCOL_ALLOWED,
    },
    Rule {
        room: "crate::pubsub",
        allowed: &[
            "crate::config",
            "crate::error",
            "crate::metrics",
            "crate::protocol",
            "crate::reactor::token",
            // Notices and mailboxes, as protocols see them (re-exported by the protocol room).
            "crate::worker::Mailbox",
            "crate::worker::Notice",
            "crate::worker::Recipients",
        ],
    },
    Rule {
        room: "crate::client",
        allowed: &[
            "crate::admission",
            "crate::config",
            "crate::error",
            "crate::lifecycle",
            "crate::metrics",
            "crate::protocol",
            // Notices, mailboxes and job results, as protocols see them.
            "crate::worker::JobResult",
            "crate::worker::Mailbox",
            "crate::worker::Notice",
            // The loop itself, run without a listener, and its dialled connections.
            "crate::reactor",
            // TLS for wss://, as the transport gives it.
            "crate::tls",
            "crate::ConnId",
            "crate::Config",
        ],
    },
    Rule {
        room: "crate::tls",
        allowed: &[
            "crate::config",
            "crate::error",
            "crate::metrics",
            "crate::net",
            "crate::Config",
        ],
    },
    Rule {
        room: "crate::lifecycle",
        allowed: &[
            "crate::config",
            "crate::error",
            "crate::metrics",
            "crate::reactor::token",
        ],
    },
    Rule {
        room: "crate::worker",
        allowed: &[
            "crate::lifecycle",
            "crate::reactor::completions",
            "crate::reactor::token",
        ],
    },
];

/// `src/` of this crate.
fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("reading src/")
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The module path of a file of the library (`src/reactor/mod.rs` is `crate::reactor`).
fn module_of(file: &Path) -> String {
    let relative = file.strip_prefix(source_root()).expect("under src/");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    std::iter::once("crate".to_string())
        .chain(parts)
        .collect::<Vec<_>>()
        .join("::")
}

/// The code of a file without its comment lines (doc links name paths that are not imports).
fn code_of(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into full paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = without_renames(tree);
    let Some(open) = tree.find('{') else {
        return vec![tree.trim_end_matches("::self").to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').expect("a closing brace")];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (at, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|item| !item.is_empty())
        .flat_map(|item| expand(&format!("{prefix}{item}")))
        .map(|path| path.trim_end_matches("::self").to_string())
        .collect()
}

/// A use tree without whitespace and without its renames (`a as b` is `a`).
fn without_renames(tree: &str) -> String {
    let mut out = String::new();
    let mut tokens = tree.split_whitespace();
    while let Some(token) = tokens.next() {
        if token == "as" {
            // The new name goes; the punctuation after it (`,` or `}`) stays.
            if let Some(name) = tokens.next() {
                out.extend(name.chars().filter(|c| !(c.is_alphanumeric() || *c == '_')));
            }
            continue;
        }
        out.push_str(token);
    }
    out
}

/// `self::`, `super::` and `crate::` paths made absolute for a file in `module`.
/// (`module_of` already names `a/mod.rs` as `a`, so `super` always drops one level.)
fn absolute(path: &str, module: &str) -> Option<String> {
    let mut base: Vec<&str> = module.split("::").collect();
    let mut rest = path;
    if let Some(after) = rest.strip_prefix("crate::") {
        return Some(format!("crate::{after}"));
    }
    if let Some(after) = rest.strip_prefix("self::") {
        return Some(format!("{}::{after}", base.join("::")));
    }
    if !rest.starts_with("super::") {
        return None;
    }
    while let Some(after) = rest.strip_prefix("super::") {
        base.pop();
        rest = after;
    }
    Some(format!("{}::{rest}", base.join("::")))
}

/// Every crate path a file names, absolute.
fn paths_named(text: &str, module: &str) -> Vec<String> {
    let code = code_of(text);
    let mut paths = Vec::new();
    // `use` statements, braces expanded.
    let mut at = 0;
    while let Some(found) = code[at..].find("use ") {
        let start = at + found;
        at = start + 4;
        let before = code[..start].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = code[at..].find(';') else {
            break;
        };
        let tree = &code[at..at + end];
        if tree.starts_with("crate::") || tree.starts_with("super::") || tree.starts_with("self::")
        {
            // `use super::*` is a test module's view of its own file.
            for path in expand(tree).into_iter().filter(|path| path != "super::*") {
                paths.extend(absolute(&path, module));
            }
        }
    }
    // Inline `crate::a::b` paths.
    for (start, _) in code.match_indices("crate::") {
        let before = code[..start].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let path: String = code[start..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        // `crate::a::{…}` is a use tree, expanded above.
        if !path.ends_with("::") {
            paths.push(path);
        }
    }
    paths
}

/// `pub use` re-exports of every module: `crate::protocol::Http` is `crate::protocol::http::Http`.
fn re_exports(files: &[PathBuf]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for file in files {
        let module = module_of(file);
        let code = code_of(&std::fs::read_to_string(file).expect("reading a source file"));
        for statement in code.split(';') {
            let statement = statement.trim();
            let Some(tree) = statement
                .strip_prefix("pub use ")
                .or_else(|| statement.strip_prefix("pub(crate) use "))
            else {
                continue;
            };
            for path in expand(tree) {
                let target =
                    absolute(&path, &module).unwrap_or_else(|| format!("{module}::{path}"));
                let name = target.rsplit("::").next().unwrap_or_default().to_string();
                map.insert(format!("{module}::{name}"), target);
            }
        }
    }
    map
}

/// Follows re-exports until the path names where the item is defined.
fn resolve(path: &str, exports: &BTreeMap<String, String>) -> String {
    let mut path = path.to_string();
    for _ in 0..8 {
        let parts: Vec<&str> = path.split("::").collect();
        let mut changed = false;
        for cut in (2..=parts.len()).rev() {
            let head = parts[..cut].join("::");
            if let Some(target) = exports.get(&head) {
                if *target != head {
                    let tail = &parts[cut..];
                    path = std::iter::once(target.as_str())
                        .chain(tail.iter().copied())
                        .collect::<Vec<_>>()
                        .join("::");
                    changed = true;
                    break;
                }
            }
        }
        if !changed {
            break;
        }
    }
    path
}

fn within(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}::"))
}

/// Every import that breaks a rule, as `file: path (rule)`.
fn violations() -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&source_root(), &mut files);
    let exports = re_exports(&files);
    let mut found = Vec::new();
    for file in &files {
        let module = module_of(file);
        let text = std::fs::read_to_string(file).expect("reading a source file");
        for named in paths_named(&text, &module) {
            let path = resolve(&named, &exports);
            for rule in RULES {
                let applies = within(&module, rule.room)
                    // A narrower rule for this very file takes it over.
                    && !RULES.iter().any(|other| {
                        other.room.len() > rule.room.len()
                            && within(&module, other.room)
                            && within(other.room, rule.room)
                    });
                if !applies || within(&path, rule.room) {
                    continue;
                }
                if !rule.allowed.iter().any(|allowed| within(&path, allowed)) {
                    found.push(format!(
                        "{}: {named} (resolves to {path}; {} may not import it)",
                        file.display(),
                        rule.room
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn every_room_imports_only_what_lies_below_it() {
    let found = violations();
    assert!(
        found.is_empty(),
        "imports against the rooms' order:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_imports_in_every_form() {
    // The checker itself: braces, `super`, inline paths and re-exports all count.
    let module = "crate::reactor::accept";
    let text = "use super::{Core, connection::Connection};\nuse crate::{server::{self, ErrorReport as Report}, config::Config};\nuse crate::lifecycle::CloseReason;\n// use crate::blocking::Model;\nfn f() { crate::protocol::http::reason(200); }\n";
    let named = paths_named(text, module);
    for expected in [
        "crate::reactor::Core",
        "crate::reactor::connection::Connection",
        "crate::server",
        "crate::server::ErrorReport",
        "crate::config::Config",
        "crate::lifecycle::CloseReason",
        "crate::protocol::http::reason",
    ] {
        assert!(
            named.iter().any(|path| path == expected),
            "{expected} in {named:?}"
        );
    }
    assert!(
        !named.iter().any(|path| path.contains("blocking")),
        "a commented-out line is not an import: {named:?}"
    );
    let mut exports = BTreeMap::new();
    exports.insert(
        "crate::protocol::Http".to_string(),
        "crate::protocol::http::Http".to_string(),
    );
    assert_eq!(
        resolve("crate::protocol::Http", &exports),
        "crate::protocol::http::Http"
    );
}
