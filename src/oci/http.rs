//! The registry's HTTP, with the discipline of the object-store client: connect and read
//! timeouts, a deadline on every metadata call, every body read capped (a Content-Length over
//! the cap is refused before a byte is read), and answers classified as storage errors are:
//! 401, 403, 404 and other 4xx are permanent and say what to do; 5xx, 408, 429 and timeouts
//! are transient. The token flow is the distribution spec's: a request answered 401 names a
//! challenge; `Basic` gets the Docker config's credentials, `Bearer` a token from the realm it
//! names (scoped to the repository, pull or pull,push), and the request is sent once more.

use super::Error;
use reqwest::{Method, StatusCode, header};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Seconds a registry may stay silent (connect, or between two reads of an answer) before
/// the call fails as transient; default 30.
pub const TIMEOUT_ENV: &str = "KOMPRESS_REGISTRY_TIMEOUT_SECONDS";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an error answer read (its OCI error body is a few hundred bytes).
const MAX_ERROR_BODY: u64 = 64 << 10;
/// Uploads get this rate on top of the deadline: a registry that stops reading is cut off.
const MIN_UPLOAD_BYTES_PER_SECOND: u64 = 1 << 20;

/// Pull, or pull and push, on one repository: what a token is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Access {
    Pull,
    Push,
}

pub(super) struct Http {
    client: reqwest::Client,
    /// For requests that send a body: reqwest's read timeout runs from the send to the
    /// answer's head, which a large upload outlasts; the caller's deadline bounds these.
    sender: reqwest::Client,
    pub(super) base: String,
    registry: String,
    credentials: Option<(String, String)>,
    /// The Authorization header that worked, per (repository, access).
    authorized: Mutex<HashMap<(String, Access), String>>,
    timeout: Duration,
    /// The spec field that configures this registry (`spec.output.registry`,
    /// `spec.model.registry`, `spec.source.registry`): what messages tell the user to change.
    pub(super) settings: &'static str,
}

/// A request body that can be made again (the token flow resends a request once).
pub(super) type MakeBody<'a> = &'a (dyn Fn() -> reqwest::Body + Send + Sync);

fn timeout_from_env() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64)
}

impl Http {
    pub(super) fn new(
        registry: &str,
        plain_http: bool,
        credentials: Option<(String, String)>,
    ) -> Result<Self, Error> {
        let timeout = timeout_from_env();
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .user_agent(concat!("kompress/", env!("CARGO_PKG_VERSION")))
        };
        let built = |b: reqwest::Result<reqwest::Client>| {
            b.map_err(|e| Error::Registry {
                registry: registry.into(),
                what: "cannot build an HTTP client".into(),
                permanent: true,
                source: Some(e),
            })
        };
        Ok(Self {
            client: built(builder().read_timeout(timeout).build())?,
            sender: built(builder().build())?,
            base: format!("{}://{registry}", if plain_http { "http" } else { "https" }),
            registry: registry.into(),
            credentials,
            authorized: Mutex::new(HashMap::new()),
            timeout,
            settings: "spec.output.registry",
        })
    }

    /// How long a whole metadata call (all its requests) may take.
    pub(super) fn deadline(&self) -> Duration {
        self.timeout * 4
    }

    /// How long an upload of `bytes` may take.
    pub(super) fn upload_deadline(&self, bytes: u64) -> Duration {
        self.deadline() + Duration::from_secs(bytes / MIN_UPLOAD_BYTES_PER_SECOND)
    }

    pub(super) fn fail(&self, what: &str, permanent: bool) -> Error {
        Error::Registry {
            registry: self.registry.clone(),
            what: what.into(),
            permanent,
            source: None,
        }
    }

    /// `fut` within `limit`, else a transient error naming `what`.
    pub(super) async fn within<T>(
        &self,
        limit: Duration,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.fail(
                &format!(
                    "{what}: no complete answer within {}s; the registry may be overloaded, retry later",
                    limit.as_secs()
                ),
                false,
            )),
        }
    }

    /// A network failure: timeouts and refused connections are transient; TLS spoken to a
    /// plain-HTTP registry is not.
    pub(super) fn net_error(&self, what: &str, e: reqwest::Error) -> Error {
        let chain = crate::error::error_chain(&e).to_ascii_lowercase();
        let tls_mismatch = [
            "invalidcontenttype",
            "corrupt message",
            "wrong version number",
        ]
        .iter()
        .any(|s| chain.contains(s));
        let (why, permanent) = if tls_mismatch {
            (
                format!(
                    "the registry does not speak HTTPS: set {}.plainHttp: true \
                     (kompress verify: --plain-http) for a plain-HTTP registry",
                    self.settings
                ),
                true,
            )
        } else if e.is_timeout() {
            (
                format!(
                    "no answer within {}s ({TIMEOUT_ENV}); the registry may be overloaded, retry later",
                    self.timeout.as_secs_f64()
                ),
                false,
            )
        } else {
            (
                "the registry could not be reached; this may be temporary, retry later".into(),
                false,
            )
        };
        Error::Registry {
            registry: self.registry.clone(),
            what: format!("{what}: {why}"),
            permanent,
            source: Some(e),
        }
    }

    /// Sends a request for `repository` with the authorization the registry asks for.
    // One request's parts, each needed: a struct for them would only be filled at each call.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &self,
        method: Method,
        url: &str,
        repository: &str,
        access: Access,
        headers: &[(header::HeaderName, String)],
        body: Option<MakeBody<'_>>,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        let key = (repository.to_string(), access);
        let mut retried = false;
        loop {
            let client = if body.is_some() {
                &self.sender
            } else {
                &self.client
            };
            let mut req = client.request(method.clone(), url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let auth = self
                .authorized
                .lock()
                .expect("not poisoned")
                .get(&key)
                .cloned();
            if let Some(a) = &auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            if let Some(b) = body {
                req = req.body(b());
            }
            let resp = req.send().await.map_err(|e| self.net_error(what, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let Some(challenge) = challenge else {
                return Ok(resp);
            };
            let Some(a) = self.authorize(&challenge, repository, access, what).await? else {
                return Ok(resp);
            };
            self.authorized
                .lock()
                .expect("not poisoned")
                .insert(key.clone(), a);
            retried = true;
        }
    }

    /// The Authorization header a challenge asks for; None when there is nothing to send
    /// (no credentials for a Basic challenge).
    async fn authorize(
        &self,
        challenge: &str,
        repository: &str,
        access: Access,
        what: &str,
    ) -> Result<Option<String>, Error> {
        use base64::Engine;
        let basic = self.credentials.as_ref().map(|(u, p)| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Basic {b64}")
        });
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            return Ok(basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        let realm = params.get("realm").cloned().unwrap_or_default();
        let Ok(mut url) = url::Url::parse(&realm) else {
            return Err(self.fail(
                &format!("{what}: the registry names a token realm that is not a URL"),
                true,
            ));
        };
        let scope = match access {
            Access::Pull => format!("repository:{repository}:pull"),
            Access::Push => format!("repository:{repository}:pull,push"),
        };
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &scope);
        }
        let mut req = self.client.get(url);
        if let Some(b) = &basic {
            req = req.header(header::AUTHORIZATION, b);
        }
        let what = format!("{what} (token)");
        let resp = req.send().await.map_err(|e| self.net_error(&what, e))?;
        let resp = self.expect(resp, &[StatusCode::OK], &what).await?;
        let body = self
            .read_capped(resp, super::MAX_METADATA_BYTES, &what)
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| self.fail(&format!("{what}: the token answer is not JSON"), true))?;
        let token = v["token"].as_str().or(v["access_token"].as_str());
        Ok(token.map(|t| format!("Bearer {t}")))
    }

    /// The answer when its status is one of `ok`; else the error it means.
    pub(super) async fn expect(
        &self,
        resp: reqwest::Response,
        ok: &[StatusCode],
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        let status = resp.status();
        if ok.contains(&status) {
            return Ok(resp);
        }
        let body = self
            .read_capped(resp, MAX_ERROR_BODY, what)
            .await
            .unwrap_or_default();
        Err(self.status_error(what, status, &body))
    }

    /// What an unexpected status means, and what to do.
    pub(super) fn status_error(&self, what: &str, status: StatusCode, body: &[u8]) -> Error {
        let detail = oci_errors(body);
        let code = status.as_u16();
        let transient = status.is_server_error() || code == 408 || code == 429;
        let todo = match code {
            401 => format!(
                "the registry wants credentials it did not get or refused the ones given: \
                 put them in the Docker config (DOCKER_CONFIG or ~/.docker/config.json; in a \
                 cluster the Secret named by {}.secretRef); retrying will not help",
                self.settings
            ),
            403 => "the credentials lack permission for this repository: grant it or use other \
                    credentials; retrying will not help"
                .to_string(),
            404 => "no such repository, tag or digest: check the reference".into(),
            _ if transient => "the registry may recover; retrying".into(),
            _ if detail.contains("HTTPS") => format!(
                "the registry speaks HTTPS: unset {}.plainHttp (kompress verify: drop \
                 --plain-http)",
                self.settings
            ),
            _ => "the registry refused the request; retrying will not help".into(),
        };
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        };
        self.fail(
            &format!("{what}: HTTP {status}{detail}: {todo}"),
            !transient,
        )
    }

    /// The body, at most `cap` bytes: a declared or actual length over it fails (permanent:
    /// what the registry sent is not what was asked for) without reading past the cap.
    pub(super) async fn read_capped(
        &self,
        mut resp: reqwest::Response,
        cap: u64,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        let too_large = || {
            self.fail(
                &format!(
                    "{what}: the answer is larger than the {cap} bytes allowed for it; the registry \
                     is not serving what was asked for"
                ),
                true,
            )
        };
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(too_large());
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.net_error(what, e))? {
            if (out.len() + chunk.len()) as u64 > cap {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// `Bearer realm="...",service="..."` → ("Bearer", {realm, service}).
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (&q[..end], q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k, v.to_string());
        rest = next.trim_start_matches([',', ' ']);
    }
    (scheme.to_string(), params)
}

/// An OCI error body's `code: message` pairs, or the start of a plain-text body; at most 300
/// characters, control characters escaped.
fn oci_errors(body: &[u8]) -> String {
    let parsed: Option<Vec<String>> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"].as_array().cloned())
        .map(|errs| {
            errs.iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e["code"].as_str().unwrap_or("?"),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect()
        });
    let text = match parsed {
        Some(list) => list.join("; "),
        None => String::from_utf8_lossy(body).trim().to_string(),
    };
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out.escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_into_scheme_and_parameters() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "reg.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("Basic", "Registry Realm")
        );
        assert!(parse_challenge("").1.is_empty());
        assert!(parse_challenge("Bearer realm=\"unterminated").1["realm"].contains("unterm"));
    }

    #[test]
    fn statuses_are_permanent_or_transient_as_for_object_storage() {
        let h = Http::new("reg.example:5000", false, None).unwrap();
        let body = br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
        for (code, permanent, says) in [
            (401, true, "Docker config"),
            (403, true, "lack permission"),
            (404, true, "check the reference"),
            (400, true, "DENIED: requested access"),
            (405, true, "retrying will not help"),
            (408, false, "retrying"),
            (429, false, "retrying"),
            (500, false, "retrying"),
            (503, false, "retrying"),
        ] {
            let e = h.status_error(
                "reading manifest x",
                StatusCode::from_u16(code).unwrap(),
                body,
            );
            assert_eq!(e.is_permanent(), permanent, "{code}: {e}");
            assert!(e.to_string().contains(says), "{code}: {e}");
        }
        let https = h.status_error(
            "x",
            StatusCode::BAD_REQUEST,
            b"Client sent an HTTP request to an HTTPS server.",
        );
        assert!(
            https
                .to_string()
                .contains("unset spec.output.registry.plainHttp"),
            "{https}"
        );
        let long = h.status_error(
            "x",
            StatusCode::BAD_REQUEST,
            "é\u{1b}".repeat(400).as_bytes(),
        );
        assert!(long.to_string().len() < 2000 && !long.to_string().contains('\u{1b}'));
    }
}
