//! A headless Chromium driven over WebDriver (chromedriver), for the example pages' tests.

use std::time::Duration;

use super::{wait_for, TIMEOUT};

/// A WebDriver session (chromedriver's HTTP protocol), for the browser test.
pub struct Browser {
    pub base: String,
    pub session: String,
}

impl Browser {
    pub fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = ureq::request(method, &url).timeout(TIMEOUT);
        let response = if method == "GET" || method == "DELETE" {
            request.call()
        } else {
            request.send_string(&body.to_string())
        };
        let text = match response {
            Ok(response) => response.into_string().expect("a WebDriver answer"),
            // The driver says why in the body (a navigation refused, an element not found).
            Err(ureq::Error::Status(code, response)) => panic!(
                "{method} {path}: status {code}: {}",
                response.into_string().unwrap_or_default()
            ),
            Err(error) => panic!("{method} {path}: {error}"),
        };
        let answer: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        answer["value"].clone()
    }

    pub fn element(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            serde_json::json!({"using": "css selector", "value": css}),
        );
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    pub fn text_of(&self, css: &str) -> String {
        let element = self.element(css);
        self.call(
            "GET",
            &format!("/element/{element}/text"),
            serde_json::json!({}),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    pub fn type_and_send(&self, text: &str) {
        let input = self.element("#message");
        self.call(
            "POST",
            &format!("/element/{input}/value"),
            serde_json::json!({ "text": text }),
        );
        let button = self.element("#send");
        self.call(
            "POST",
            &format!("/element/{button}/click"),
            serde_json::json!({}),
        );
    }
}

/// Starts a program and returns it with the first line it prints.
pub fn start_printing(program: &std::path::Path, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("starting {}: {error}", program.display()));
    let stdout = child.stdout.take().expect("piped");
    let (sender, receiver) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let _ = sender.send(lines.next());
        for _ in lines {}
    });
    let line = receiver
        .recv_timeout(TIMEOUT)
        .ok()
        .flatten()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("{} printed no first line", program.display()));
    (child, line)
}

/// A chromedriver on a free port and a headless Chromium session in it; both end on drop.
pub struct Session {
    pub browser: Browser,
    driver: std::process::Child,
    profile: std::path::PathBuf,
}

impl Session {
    /// Starts chromedriver and a headless Chromium (its own fresh profile).
    pub fn start() -> Session {
        Session::start_with(&[])
    }

    /// Like [`Session::start`], with more Chromium switches.
    pub fn start_with(switches: &[String]) -> Session {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|free| free.local_addr())
            .expect("a free port")
            .port();
        let driver = std::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to be ready", || {
            ureq::get(&format!("{base}/status"))
                .timeout(Duration::from_millis(500))
                .call()
                .ok()
                .and_then(|response| response.into_string().ok())
                .is_some_and(|text| text.contains("\"ready\":true"))
        });
        let profile = std::env::temp_dir().join(format!(
            "socketserver-chromium-{}-{port}",
            std::process::id()
        ));
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--disable-quic",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend_from_slice(switches);
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": args,
            },
        }}});
        let created: serde_json::Value = serde_json::from_str(
            &ureq::post(&format!("{base}/session"))
                .timeout(Duration::from_secs(30))
                .send_string(&capabilities.to_string())
                .expect("a browser session")
                .into_string()
                .expect("an answer"),
        )
        .expect("JSON");
        let browser = Browser {
            base,
            session: created["value"]["sessionId"]
                .as_str()
                .expect("a session id")
                .to_string(),
        };
        Session {
            browser,
            driver,
            profile,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!(
            "{}/session/{}",
            self.browser.base, self.browser.session
        ))
        .timeout(TIMEOUT)
        .call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// An example program built beside the tests (target/<profile>/examples/NAME).
pub fn example(name: &str) -> std::path::PathBuf {
    let deps = std::env::current_exe().expect("this test's path");
    let example = deps
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the target directory")
        .join("examples")
        .join(name);
    assert!(
        example.exists(),
        "{} is missing: a whole `cargo test` builds the examples (or `cargo build --example {name}`)",
        example.display()
    );
    example
}
