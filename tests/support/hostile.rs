//! A small HTTP/1.1 server on 127.0.0.1 that answers each request as a test decides: files,
//! registry answers, or hostile ones (a huge Content-Length, an endless body, no answer at
//! all). And kompress run under an address-space limit, so that an unbounded read fails the
//! test (the allocation fails) instead of the machine.

use base64::Engine;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request as the server read it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// What followed `?` in the request target (empty when nothing did).
    pub query: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How to answer one request.
pub enum Answer {
    /// A whole answer: status, headers, body (Content-Length is added).
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A status line and headers (Content-Length included when the test gives one), then bytes
    /// for as long as the client reads: an endless body.
    Endless {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// Read the request and never answer (until the server is dropped).
    Silent,
}

impl Answer {
    pub fn json(status: u16, body: &serde_json::Value, media_type: &str) -> Self {
        Answer::Full {
            status,
            headers: vec![("Content-Type".into(), media_type.into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn status(status: u16) -> Self {
        Answer::Full {
            status,
            headers: vec![],
            body: vec![],
        }
    }
}

type Handler = dyn Fn(&Request) -> Answer + Send + Sync;

/// A server on 127.0.0.1; stops (and ends every connection it holds) when dropped.
pub struct Server {
    pub addr: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (st, sn) = (stop.clone(), seen.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (st, sn, h) = (st.clone(), sn.clone(), handler.clone());
                        std::thread::spawn(move || serve(s, &*h, &st, &sn));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, stop, seen }
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let req = Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers,
    };
    // A request body (an upload) is read and dropped.
    let len: u64 = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::io::copy(&mut r.by_ref().take(len), &mut std::io::sink()).ok()?;
    Some(req)
}

fn head(status: u16, headers: &[(String, String)]) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status} X\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn serve(s: TcpStream, handler: &Handler, stop: &AtomicBool, seen: &Mutex<Vec<Request>>) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let started = Instant::now();
    // A TLS ClientHello (first byte 0x16) gets what a plain-HTTP server answers to it.
    if r.fill_buf().is_ok_and(|b| b.first() == Some(&0x16)) {
        let _ = w.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    // Keep-alive: requests one after another until the client closes the connection.
    while let Some(req) = read_request(&mut r) {
        seen.lock().unwrap().push(req.clone());
        match handler(&req) {
            Answer::Full {
                status,
                mut headers,
                body,
            } => {
                headers.push(("Content-Length".into(), body.len().to_string()));
                let mut out = head(status, &headers);
                if req.method != "HEAD" {
                    out.extend_from_slice(&body);
                }
                if w.write_all(&out).is_err() {
                    return;
                }
            }
            Answer::Endless { status, headers } => {
                if w.write_all(&head(status, &headers)).is_err() {
                    return;
                }
                let chunk = vec![b'{'; 64 << 10];
                while !stop.load(Ordering::Relaxed) && w.write_all(&chunk).is_ok() {}
                return;
            }
            Answer::Silent => {
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
        }
    }
}

/// A file server for `dir` (GET and HEAD by path; the query string is ignored, as a presigned
/// URL's is by the tests that use it).
pub fn file_server(dir: &Path) -> Server {
    let dir = dir.to_path_buf();
    Server::start(move |req| {
        let p = dir.join(req.path.trim_start_matches('/'));
        match std::fs::read(&p) {
            Ok(body) => Answer::Full {
                status: 200,
                headers: vec![],
                body,
            },
            Err(_) => Answer::status(404),
        }
    })
}

/// How a capped run ended.
#[derive(Debug)]
pub struct Capped {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Capped {
    pub fn describe(&self) -> String {
        format!(
            "exit {:?} after {:.1}s{}\nstdout: {}\nstderr: {}",
            self.code,
            self.elapsed.as_secs_f64(),
            if self.timed_out {
                " (killed: too slow)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }
}

/// Runs kompress with at most `mem_mib` MiB of address space (`ulimit -v`), killed after
/// `limit`: a read without a bound fails its allocation (an abort, exit 134) instead of
/// eating the machine; a wait without a deadline is killed and says so.
pub fn run_capped(args: &[&str], envs: &[(&str, &str)], limit: Duration, mem_mib: u64) -> Capped {
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "ulimit -v {} && exec \"$0\" \"$@\"",
            mem_mib * 1024
        ))
        .arg(super::bin())
        .args(args);
    let r = super::run_logged(&mut c, envs, limit);
    Capped {
        code: r.status.code(),
        stdout: r.stdout,
        stderr: r.stderr,
        elapsed: r.elapsed,
        timed_out: r.timed_out,
    }
}

/// The repository the honest artifact lives in.
pub const REPO: &str = "m/x";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", super::sha256_bytes(b))
}

/// An honest kompress artifact: a one-layer ModelPack manifest, an unsigned evidence envelope
/// and its referrer, all at `addr`.
pub struct Artifact {
    pub layer: Vec<u8>,
    pub layer_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub referrer: Vec<u8>,
    pub referrer_digest: String,
    pub envelope: Vec<u8>,
    pub envelope_digest: String,
}

impl Artifact {
    pub fn new(addr: &str) -> Self {
        let layer = b"honest model bytes".to_vec();
        let layer_digest = digest(&layer);
        let manifest = json!({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "artifactType": "application/vnd.cncf.model.manifest.v1+json",
            "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", "digest": digest(b"{}"), "size": 2},
            "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": layer_digest,
                        "size": layer.len(), "annotations": {"org.cncf.model.filepath": "model.onnx"}}],
        })
        .to_string()
        .into_bytes();
        let manifest_digest = digest(&manifest);
        let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [
                {"name": "model.onnx", "digest": {"sha256": hex(&layer_digest)}},
                {"name": format!("oci://{addr}/{REPO}"), "digest": {"sha256": hex(&manifest_digest)}},
            ],
            "predicateType": "https://kompress.dev/attestation/evaluation/v1",
            "predicate": {"verdict": "Passed", "checks": [{"name": "accuracyDrop", "value": 0.0, "limit": 0.01, "passed": true}],
                          "job": {"name": "x"}, "runId": "r1", "inputs": {"model": {"uri": "m.onnx", "sha256": "00"}}},
        });
        let envelope = json!({
            "payloadType": "application/vnd.in-toto+json",
            "payload": base64::engine::general_purpose::STANDARD.encode(statement.to_string()),
            "signatures": [],
        })
        .to_string()
        .into_bytes();
        let envelope_digest = digest(&envelope);
        let referrer = json!({
            "schemaVersion": 2, "mediaType": MANIFEST, "artifactType": "application/vnd.in-toto+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(b"{}"), "size": 2},
            "layers": [{"mediaType": "application/vnd.dsse.envelope.v1+json", "digest": envelope_digest, "size": envelope.len()}],
            "subject": {"mediaType": MANIFEST, "digest": manifest_digest, "size": manifest.len()},
        })
        .to_string()
        .into_bytes();
        let referrer_digest = digest(&referrer);
        Self {
            layer,
            layer_digest,
            manifest,
            manifest_digest,
            referrer,
            referrer_digest,
            envelope,
            envelope_digest,
        }
    }

    /// The honest answer to a request.
    pub fn answer(&self, req: &Request) -> Answer {
        let p = req.path.as_str();
        let base = format!("/v2/{REPO}/");
        let Some(rest) = p.strip_prefix(&base) else {
            return Answer::status(if p == "/v2/" { 200 } else { 404 });
        };
        let full = |body: &[u8], media: &str| Answer::Full {
            status: 200,
            headers: vec![("Content-Type".into(), media.into())],
            body: body.to_vec(),
        };
        if rest == "manifests/v1" || rest == format!("manifests/{}", self.manifest_digest) {
            return full(&self.manifest, MANIFEST);
        }
        if rest == format!("manifests/{}", self.referrer_digest) {
            return full(&self.referrer, MANIFEST);
        }
        if rest == format!("referrers/{}", self.manifest_digest) {
            let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
                {"mediaType": MANIFEST, "digest": self.referrer_digest, "size": self.referrer.len(),
                 "artifactType": "application/vnd.in-toto+json"}]});
            return Answer::json(200, &index, INDEX);
        }
        if rest == format!("blobs/{}", self.envelope_digest) {
            return full(&self.envelope, "application/octet-stream");
        }
        if rest == format!("blobs/{}", self.layer_digest) {
            return full(&self.layer, "application/octet-stream");
        }
        Answer::status(404)
    }
}
