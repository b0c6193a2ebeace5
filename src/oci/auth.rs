//! Registry credentials from the Docker config (`$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`): `auths.<registry>.auth` or `username`/`password`.

use super::Error;
use serde_json::Value;
use std::path::PathBuf;

/// Largest Docker config read.
const MAX_DOCKER_CONFIG_BYTES: u64 = 4 << 20;

/// The registry's credentials from the Docker config (`$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`) as (user, password); None (anonymous) when there is no config or
/// no entry for it.
pub fn auth_for(registry: &str) -> Result<Option<(String, String)>, Error> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".docker/config.json"),
            None => return Ok(None),
        },
    };
    let text = match crate::onnx::read_small(&path, MAX_DOCKER_CONFIG_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { path, source }),
    };
    auth_from_config(&text, registry).map_err(|why| Error::DockerConfig {
        path: path.display().to_string(),
        why,
    })
}

fn auth_from_config(text: &[u8], registry: &str) -> Result<Option<(String, String)>, String> {
    use base64::Engine;
    let cfg: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON ({e})"))?;
    let Some(auths) = cfg.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    let host = |k: &str| {
        let k = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))
            .unwrap_or(k);
        k.split('/').next().unwrap_or(k).to_string()
    };
    let Some(entry) = auths.iter().find(|(k, _)| host(k) == registry).map(|e| e.1) else {
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        return Ok(Some((u.into(), p.into())));
    }
    if let Some(a) = entry.get("auth").and_then(Value::as_str) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a)
            .map_err(|_| format!("auths.{registry}.auth is not base64"))?;
        let s = String::from_utf8(decoded)
            .map_err(|_| format!("auths.{registry}.auth is not UTF-8"))?;
        let (u, p) = s
            .split_once(':')
            .ok_or_else(|| format!("auths.{registry}.auth is not user:password"))?;
        return Ok(Some((u.into(), p.into())));
    }
    if entry.get("identitytoken").is_some() {
        return Err(format!(
            "auths.{registry} holds an identity token, which kompress does not use: give username and password (or auth)"
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries_become_credentials() {
        let cfg = br#"{"auths": {"https://reg.example:5000/v1/": {"auth": "dXNlcjpwYXNz"}, "other.io": {"username": "u", "password": "p"}}}"#;
        let basic = |a: Option<(String, String)>| a.expect("credentials");
        assert_eq!(
            basic(auth_from_config(cfg, "reg.example:5000").unwrap()),
            ("user".into(), "pass".into())
        );
        assert_eq!(
            basic(auth_from_config(cfg, "other.io").unwrap()),
            ("u".into(), "p".into())
        );
        assert_eq!(auth_from_config(cfg, "third.io").unwrap(), None);
        assert!(
            auth_from_config(b"{", "x")
                .unwrap_err()
                .contains("not JSON")
        );
        let bad = br#"{"auths": {"x.io": {"auth": "@@"}}}"#;
        assert!(
            auth_from_config(bad, "x.io")
                .unwrap_err()
                .contains("base64")
        );
    }
}
