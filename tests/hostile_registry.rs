//! A registry that lies, floods, stalls or refuses cannot crash or hang kompress: every answer
//! is capped, every wait has a deadline, and each failure exits with its class (65: a person
//! must act; 75: retry) and says what to do. The registry is a small local server (support::
//! hostile) that serves an honest kompress artifact except where a test makes it hostile;
//! kompress runs under a 1 GiB address-space limit, so a read without a bound fails the test.

mod support;

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::hostile::{Answer, Artifact, REPO, Request, Server, run_capped};
use support::*;

const MEM_MIB: u64 = 1024;
/// The registry timeout the tests give kompress (seconds).
const TIMEOUT: &str = "2";

/// A registry serving the honest artifact, except where `hostile` answers first.
fn registry(
    hostile: impl Fn(&Request, &Artifact) -> Option<Answer> + Send + Sync + 'static,
) -> Server {
    let slot: Arc<std::sync::OnceLock<Artifact>> = Arc::new(std::sync::OnceLock::new());
    let s = slot.clone();
    let server = Server::start(move |req| {
        let a = s.get().expect("artifact set");
        hostile(req, a).unwrap_or_else(|| a.answer(req))
    });
    let _ = slot.set(Artifact::new(&server.addr));
    server
}

fn verify(server: &Server, plain_http: bool) -> support::hostile::Capped {
    let reference = format!("oci://{}/{REPO}:v1", server.addr);
    let mut args = vec!["verify", reference.as_str(), "--unsigned"];
    if plain_http {
        args.push("--plain-http");
    }
    let empty = tempfile::tempdir().unwrap();
    let docker = empty.path().to_str().unwrap().to_string();
    run_capped(
        &args,
        &[
            ("KOMPRESS_REGISTRY_TIMEOUT_SECONDS", TIMEOUT),
            ("DOCKER_CONFIG", docker.as_str()),
        ],
        Duration::from_secs(60),
        MEM_MIB,
    )
}

fn is_manifest(req: &Request) -> bool {
    req.path == format!("/v2/{REPO}/manifests/v1")
}

fn endless(content_length: Option<&str>) -> Answer {
    Answer::Endless {
        status: 200,
        headers: content_length
            .map(|n| vec![("Content-Length".to_string(), n.to_string())])
            .unwrap_or_default(),
    }
}

#[track_caller]
fn expect(f: &support::hostile::Capped, code: i32, says: &[&str]) {
    assert!(!f.timed_out, "{}", f.describe());
    assert_eq!(f.code, Some(code), "{}", f.describe());
    for s in says {
        assert!(f.stderr.contains(s), "`{s}` missing: {}", f.describe());
    }
}

#[test]
fn the_honest_artifact_verifies() {
    let server = registry(|_, _| None);
    let f = verify(&server, true);
    expect(&f, 0, &[]);
    assert!(
        f.stdout.contains("verdict        Passed"),
        "{}",
        f.describe()
    );
}

#[test]
fn a_huge_or_endless_answer_is_refused_at_its_cap() {
    for (case, answer_for) in [
        ("manifest, huge Content-Length", "manifest-huge"),
        ("manifest, endless body", "manifest-endless"),
        ("referrers, endless body", "referrers"),
        ("token, endless body", "token"),
    ] {
        let mode = answer_for.to_string();
        let server = registry(move |req, _| match mode.as_str() {
            "manifest-huge" if is_manifest(req) => Some(endless(Some("100000000000"))),
            "manifest-endless" if is_manifest(req) => Some(endless(None)),
            "referrers" if req.path.contains("/referrers/") => Some(endless(None)),
            "token" if req.path == "/token" => Some(endless(None)),
            "token" if req.header("authorization").is_none() => Some(Answer::Full {
                status: 401,
                headers: vec![(
                    "WWW-Authenticate".into(),
                    format!(
                        "Bearer realm=\"http://{}/token\",service=\"r\"",
                        req.header("host").unwrap_or("")
                    ),
                )],
                body: vec![],
            }),
            _ => None,
        });
        let f = verify(&server, true);
        expect(&f, 65, &["larger than the 4194304 bytes allowed"]);
        assert!(
            f.elapsed < Duration::from_secs(30),
            "{case}: {}",
            f.describe()
        );
    }
}

#[test]
fn a_layer_is_read_no_further_than_its_declared_size_and_checked() {
    let server = registry(|req, a| (req.path.ends_with(&a.layer_digest)).then(|| endless(None)));
    let f = verify(&server, true);
    expect(&f, 65, &["where the manifest declares 18"]);

    let server = registry(|req, a| {
        req.path.ends_with(&a.layer_digest).then(|| Answer::Full {
            status: 200,
            headers: vec![],
            body: b"LYING model bytes!".to_vec(),
        })
    });
    let f = verify(&server, true);
    expect(&f, 1, &["does not hold the bytes the evidence names"]);
}

#[test]
fn a_registry_that_never_answers_is_a_transient_failure_within_the_deadline() {
    for target in ["manifest", "layer"] {
        let t = target.to_string();
        let server = registry(move |req, a| {
            let hit = match t.as_str() {
                "manifest" => is_manifest(req),
                _ => req.path.ends_with(&a.layer_digest),
            };
            hit.then_some(Answer::Silent)
        });
        let f = verify(&server, true);
        expect(&f, 75, &["retry later"]);
        assert!(
            f.elapsed < Duration::from_secs(20),
            "{target}: {}",
            f.describe()
        );
    }
}

/// The answer a refusing or overloaded registry gives to a manifest GET.
fn refusal(case: &str) -> Answer {
    let oci_error = |status: u16, code: &str| {
        Answer::json(
            status,
            &json!({"errors": [{"code": code, "message": "said the registry"}]}),
            "application/json",
        )
    };
    match case {
        "401" => Answer::Full {
            status: 401,
            headers: vec![("WWW-Authenticate".into(), "Basic realm=\"r\"".into())],
            body: vec![],
        },
        "403" => oci_error(403, "DENIED"),
        "404" => Answer::status(404),
        "400" => oci_error(400, "MANIFEST_INVALID"),
        "503" => oci_error(503, "UNAVAILABLE"),
        "429" => oci_error(429, "TOOMANYREQUESTS"),
        _ => Answer::status(500),
    }
}

#[test]
fn refusals_say_what_to_do_and_are_permanent_and_overload_is_transient() {
    let cases: [(&str, i32, &[&str]); 7] = [
        ("401", 65, &["HTTP 401", "Docker config"]),
        ("403", 65, &["HTTP 403", "lack permission"]),
        ("404", 65, &["no manifest for it", "check the repository"]),
        (
            "400",
            65,
            &[
                "MANIFEST_INVALID: said the registry",
                "retrying will not help",
            ],
        ),
        ("500", 75, &["HTTP 500", "retrying"]),
        ("503", 75, &["HTTP 503", "UNAVAILABLE"]),
        ("429", 75, &["HTTP 429"]),
    ];
    for (case, code, says) in cases {
        let c = case.to_string();
        let server = registry(move |req, _| is_manifest(req).then(|| refusal(&c)));
        let f = verify(&server, true);
        assert!(!f.timed_out, "{case}: {}", f.describe());
        assert_eq!(f.code, Some(code), "{case}: {}", f.describe());
        for s in says {
            assert!(
                f.stderr.contains(s),
                "{case}: `{s}` missing: {}",
                f.describe()
            );
        }
    }
}

#[test]
fn https_spoken_to_a_plain_http_registry_names_plain_http() {
    let server = registry(|_, _| None);
    let f = verify(&server, false);
    expect(&f, 65, &["does not speak HTTPS", "plainHttp"]);
}

/// A digits job promoting to `oci://addr/m/x:v1` over plain HTTP.
fn promote_job(dir: &std::path::Path, addr: &str) -> String {
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: hostile\nspec:\n  model:\n    uri: {}\n  dataset:\n    uri: {}\n    labels: labels\n  passes:\n    - quantize: {{mode: dynamic}}\n  thresholds:\n    maxAccuracyDrop: 0.05\n  output:\n    uri: {}\n    promoteTo: oci://{addr}/{REPO}:v1\n    registry: {{plainHttp: true}}\n",
        repo().join("examples/digits/model.onnx").display(),
        repo().join("examples/digits/eval.npz").display(),
        dir.join("candidates").display(),
    );
    write_job(dir, &yaml)
}

#[test]
fn a_promotion_to_a_stalled_or_refusing_registry_ends_with_its_class() {
    for (case, code, says) in [("silent", 75, "retry later"), ("401", 65, "Docker config")] {
        let c = case.to_string();
        let server = Server::start(move |_| match c.as_str() {
            "silent" => Answer::Silent,
            _ => Answer::Full {
                status: 401,
                headers: vec![("WWW-Authenticate".into(), "Basic realm=\"r\"".into())],
                body: vec![],
            },
        });
        let dir = tempfile::tempdir().unwrap();
        let job = promote_job(dir.path(), &server.addr);
        let docker = dir.path().join("docker");
        std::fs::create_dir_all(&docker).unwrap();
        let f = run_capped(
            &["run", "-f", &job],
            &[
                ("KOMPRESS_REGISTRY_TIMEOUT_SECONDS", TIMEOUT),
                ("DOCKER_CONFIG", docker.to_str().unwrap()),
            ],
            Duration::from_secs(180),
            8192,
        );
        assert!(!f.timed_out, "{case}: {}", f.describe());
        assert_eq!(f.code, Some(code), "{case}: {}", f.describe());
        assert!(f.stderr.contains(says), "{case}: {}", f.describe());
    }
}

/// `kompress run` over the hostile registry's artifact as `spec.model.uri`.
fn run_from(server: &Server, dir: &std::path::Path) -> support::hostile::Capped {
    let yaml = format!(
        "apiVersion: kompress.dev/v1alpha1\nkind: CompressionJob\nmetadata:\n  name: pull\nspec:\n  model: {{uri: 'oci://{}/{REPO}:v1', registry: {{plainHttp: true}}}}\n  dataset: {{uri: '{}'}}\n  passes: [{{quantize: {{}}}}]\n  output: {{uri: '{}'}}\n",
        server.addr,
        repo().join("examples/digits/eval.npz").display(),
        dir.join("out").display(),
    );
    let job = write_job(dir, &yaml);
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    run_capped(
        &[
            "run",
            "-f",
            &job,
            "--scratch",
            dir.join("scratch").to_str().unwrap(),
        ],
        &[
            ("KOMPRESS_REGISTRY_TIMEOUT_SECONDS", TIMEOUT),
            ("DOCKER_CONFIG", docker.to_str().unwrap()),
        ],
        Duration::from_secs(60),
        MEM_MIB,
    )
}

#[test]
fn a_model_layer_is_pulled_no_further_than_its_declared_size_and_only_with_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    // an endless layer: cut at the declared size, under the memory limit
    let server = registry(|req, a| (req.path.ends_with(&a.layer_digest)).then(|| endless(None)));
    let f = run_from(&server, dir.path());
    expect(
        &f,
        65,
        &["spec.model.uri", "where the manifest declares 18"],
    );
    // bytes of the declared size that are not the layer's: refused before anything reads them
    let server = registry(|req, a| {
        req.path.ends_with(&a.layer_digest).then(|| Answer::Full {
            status: 200,
            headers: vec![],
            body: b"LYING model bytes!".to_vec(),
        })
    });
    let f = run_from(&server, dir.path());
    expect(&f, 65, &["spec.model.uri", "does not hash to its digest"]);
    // the honest bytes are fetched and then read as a model (they are not one)
    let server = registry(|_, _| None);
    let f = run_from(&server, dir.path());
    assert_ne!(f.code, Some(0), "{}", f.describe());
    assert!(
        !f.stderr.contains("does not hash") && !f.stderr.contains("declares"),
        "{}",
        f.describe()
    );
}

/// A tag list page: `tags`, and a `Link` to `next` when there is one.
fn tag_page(tags: &[String], next: Option<String>) -> Answer {
    let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    if let Some(n) = next {
        headers.push(("Link".into(), format!("<{n}>; rel=\"next\"")));
    }
    Answer::Full {
        status: 200,
        headers,
        body: json!({"name": REPO, "tags": tags}).to_string().into_bytes(),
    }
}

#[tokio::test]
async fn tag_listings_follow_link_pages_on_the_registry_and_stop_at_their_bounds() {
    let tags_path = format!("/v2/{REPO}/tags/list");
    // three pages of two tags, linked by `last=` as the distribution registry does
    let path = tags_path.clone();
    let paged = Server::start(move |req| {
        if req.path != path {
            return Answer::status(404);
        }
        let page: usize = req
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("last=v"))
            .map_or(0, |n| n.parse::<usize>().unwrap() / 2);
        let tags: Vec<String> = (page * 2 + 1..=page * 2 + 2)
            .map(|i| format!("v{i}"))
            .collect();
        let next = (page < 2).then(|| format!("{path}?last=v{}&n=2", page * 2 + 2));
        tag_page(&tags, next)
    });
    let s = kompress::oci::Session::for_settings(&paged.addr, true, "spec.source.registry")
        .await
        .unwrap();
    assert_eq!(
        s.tags(REPO).await.unwrap(),
        ["v1", "v2", "v3", "v4", "v5", "v6"]
    );
    assert_eq!(
        paged
            .requests()
            .iter()
            .filter(|r| r.path == tags_path)
            .count(),
        3
    );

    // a next page on another host is refused (credentials never leave the registry)
    let elsewhere =
        Server::start(|_| tag_page(&["v1".into()], Some("http://127.0.0.2:1/v2/x".into())));
    let s = kompress::oci::Session::for_settings(&elsewhere.addr, true, "spec.source.registry")
        .await
        .unwrap();
    let e = s.tags(REPO).await.unwrap_err();
    assert!(
        e.is_permanent() && e.to_string().contains("not on the registry itself"),
        "{e}"
    );

    // a registry whose pages never end stops at the page bound, permanently
    let path = tags_path.clone();
    let endless_pages =
        Server::start(move |_| tag_page(&["v1".into()], Some(format!("{path}?last=v1"))));
    let s = kompress::oci::Session::for_settings(&endless_pages.addr, true, "spec.source.registry")
        .await
        .unwrap();
    let e = s.tags(REPO).await.unwrap_err();
    assert!(
        e.is_permanent()
            && e.to_string()
                .contains(&format!("more than {} pages", kompress::oci::MAX_TAG_PAGES)),
        "{e}"
    );
    assert_eq!(endless_pages.requests().len(), kompress::oci::MAX_TAG_PAGES);

    // more tags than the bound, in one page
    let many: Vec<String> = (0..=kompress::oci::MAX_TAGS)
        .map(|i| format!("t{i}"))
        .collect();
    let flood = Server::start(move |_| tag_page(&many, None));
    let s = kompress::oci::Session::for_settings(&flood.addr, true, "spec.source.registry")
        .await
        .unwrap();
    let e = s.tags(REPO).await.unwrap_err();
    assert!(e.to_string().contains("more than 10000 tags"), "{e}");
}
