//! Listing a repository's tags, page by page, bounded.

use super::http::Access;
use super::{Error, MAX_METADATA_BYTES, MAX_TAG_PAGES, MAX_TAGS, Session, TAGS_PER_PAGE};
use reqwest::{Method, StatusCode, header};
use serde_json::Value;

impl Session {
    /// Every tag of `repository` (`GET /v2/<repository>/tags/list`), following the
    /// registry's `Link: <...>; rel="next"` pages on the same origin. Bounded: each page at
    /// most [`MAX_METADATA_BYTES`], at most [`MAX_TAG_PAGES`] pages and [`MAX_TAGS`] tags (more
    /// is a permanent error: the repository wants a narrower source). Names that are not tags
    /// by the reference grammar are skipped (they never reach a URL).
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, Error> {
        let what = format!("listing the tags of {repository}");
        let mut url = format!(
            "{}/v2/{repository}/tags/list?n={TAGS_PER_PAGE}",
            self.http.base
        );
        let mut out = Vec::new();
        for page in 0.. {
            if page == MAX_TAG_PAGES {
                return Err(self.http.fail(
                    &format!(
                        "{what}: more than {MAX_TAG_PAGES} pages of tags; kompress reads at most \
                         {MAX_TAGS} tags: use a repository with fewer tags"
                    ),
                    true,
                ));
            }
            let (body, link) = self
                .http
                .within(self.http.deadline(), &what, async {
                    let resp = self
                        .http
                        .send(
                            Method::GET,
                            &url,
                            repository,
                            Access::Pull,
                            &[],
                            None,
                            &what,
                        )
                        .await?;
                    let resp = self.http.expect(resp, &[StatusCode::OK], &what).await?;
                    let link = resp
                        .headers()
                        .get(header::LINK)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = self
                        .http
                        .read_capped(resp, MAX_METADATA_BYTES, &what)
                        .await?;
                    Ok((body, link))
                })
                .await?;
            let tags =
                parse_tags(&body).map_err(|why| self.http.fail(&format!("{what}: {why}"), true))?;
            if out.len() + tags.len() > MAX_TAGS {
                return Err(self.http.fail(
                    &format!(
                        "{what}: more than {MAX_TAGS} tags, the most kompress reads: use a \
                         repository with fewer tags"
                    ),
                    true,
                ));
            }
            out.extend(tags);
            match link.as_deref().and_then(next_link) {
                Some(next) => {
                    url = same_origin(&url, next).ok_or_else(|| {
                        self.http.fail(
                            &format!(
                                "{what}: the registry's next page `{}` is not on the registry \
                                 itself; credentials are never sent elsewhere",
                                next.chars().take(200).collect::<String>().escape_debug()
                            ),
                            true,
                        )
                    })?
                }
                None => break,
            }
        }
        Ok(out)
    }
}

/// The `tags` of a tag list answer (`{"name": ..., "tags": [...]}`; `null` tags: none),
/// names that are not tags by the reference grammar left out.
fn parse_tags(body: &[u8]) -> Result<Vec<String>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| "the tag list is not JSON".to_string())?;
    match &v["tags"] {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => Ok(a
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| is_tag(t))
            .map(str::to_string)
            .collect()),
        _ => Err("the tag list has no `tags` array".into()),
    }
}

/// A tag by the distribution reference grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The target of the `rel="next"` link of a `Link` header, if any.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|part| {
        let part = part.trim();
        let rest = part.strip_prefix('<')?;
        let (target, params) = rest.split_once('>')?;
        params
            .split(';')
            .map(str::trim)
            .any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("rel")
                        && v.trim().trim_matches('"').eq_ignore_ascii_case("next")
                })
            })
            .then_some(target.trim())
    })
}

/// `next` resolved against `current`, when it stays on the same scheme, host and port.
fn same_origin(current: &str, next: &str) -> Option<String> {
    let base = url::Url::parse(current).ok()?;
    let to = base.join(next).ok()?;
    (to.scheme() == base.scheme()
        && to.host_str() == base.host_str()
        && to.port_or_known_default() == base.port_or_known_default())
    .then(|| to.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_parse_and_skip_what_is_not_a_tag() {
        let body = br#"{"name": "a/b", "tags": ["v1", "latest", "bad tag", "-x", "v2.0_rc-1", 7]}"#;
        assert_eq!(parse_tags(body).unwrap(), ["v1", "latest", "v2.0_rc-1"]);
        assert!(
            parse_tags(br#"{"name": "a/b", "tags": null}"#)
                .unwrap()
                .is_empty()
        );
        assert!(parse_tags(b"<html>").unwrap_err().contains("not JSON"));
        assert!(
            parse_tags(br#"{"tags": "v1"}"#)
                .unwrap_err()
                .contains("`tags` array")
        );
        assert!(is_tag(&"a".repeat(128)) && !is_tag(&"a".repeat(129)) && !is_tag(""));
    }

    #[test]
    fn the_next_page_is_the_link_with_rel_next_on_the_same_origin() {
        assert_eq!(
            next_link(r#"</v2/a/b/tags/list?last=v9&n=2>; rel="next""#),
            Some("/v2/a/b/tags/list?last=v9&n=2")
        );
        assert_eq!(
            next_link(r#"<https://r/x?p=1>; rel="prev", <https://r/x?p=3>; rel=next"#),
            Some("https://r/x?p=3")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
        let cur = "http://127.0.0.1:5000/v2/a/tags/list?n=2";
        assert_eq!(
            same_origin(cur, "/v2/a/tags/list?last=v2&n=2").as_deref(),
            Some("http://127.0.0.1:5000/v2/a/tags/list?last=v2&n=2")
        );
        assert_eq!(
            same_origin(cur, "http://evil.example:5000/v2/a/tags/list"),
            None
        );
        assert_eq!(
            same_origin(cur, "https://127.0.0.1:5000/v2/a/tags/list"),
            None
        );
        assert_eq!(
            same_origin(cur, "http://127.0.0.1:5001/v2/a/tags/list"),
            None
        );
    }
}
