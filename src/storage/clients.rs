//! clients: the object_store client of each remote scheme, built from the environment, the
//! job's `spec.storage` overrides and the extra options, with a bounded retry policy. Plain
//! http endpoints are refused unless allowed.

use super::error::StoreInfo;
use super::{Cause, Error, Location, Result, Scheme, Storage, Store, credential_source};
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use std::sync::Arc;
use std::time::Duration;

impl Storage {
    /// A new client for a remote location's store.
    pub(super) fn build(&self, loc: &Location) -> Result<Store> {
        let opts = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(300));
        let retry = self.retry_config();
        let (store, info): (Arc<dyn ObjectStore>, StoreInfo) = match loc.scheme {
            Scheme::Local => unreachable!("local locations do not use object_store"),
            Scheme::S3 => self.s3(loc, opts, retry)?,
            Scheme::Gcs => (self.gcs(loc, opts, retry)?, StoreInfo::default()),
            Scheme::Azure => (self.azure(loc, opts, retry)?, StoreInfo::default()),
            Scheme::Http => (
                Arc::new(
                    object_store::http::HttpBuilder::new()
                        .with_url(loc.store_url())
                        .with_retry(retry)
                        .with_client_options(opts.with_allow_http(true))
                        .build()
                        .map_err(config_error(loc))?,
                ),
                StoreInfo::default(),
            ),
        };
        Ok(Store { store, info })
    }

    /// S3: the environment, the options, then `spec.storage` (endpoint, region, addressing,
    /// allowHttp); us-east-1 when nothing names a region. Without configured credentials the
    /// instance metadata endpoint is asked, and errors name it.
    fn s3(
        &self,
        loc: &Location,
        opts: ClientOptions,
        retry: RetryConfig,
    ) -> Result<(Arc<dyn ObjectStore>, StoreInfo)> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as K};
        use object_store::client::ClientConfigKey;
        // Client options first: from_env() puts AWS_ALLOW_HTTP etc. into the client
        // options, which a later with_client_options() would throw away.
        let apply =
            |b: AmazonS3Builder, k: &str, v: &str| k.parse().map(|k| b.with_config(k, v)).ok();
        let mut b = self
            .configured(
                "AWS_",
                AmazonS3Builder::new().with_client_options(opts),
                apply,
            )
            .with_url(loc.store_url())
            .with_retry(retry);
        if b.get_config_value(&K::Region).is_none() {
            b = b.with_region("us-east-1");
        }
        if let Some(e) = &self.spec.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &self.spec.region {
            b = b.with_region(r);
        }
        if let Some(v) = self.spec.virtual_hosted_style {
            b = b.with_virtual_hosted_style_request(v);
        }
        if let Some(h) = self.spec.allow_http {
            b = b.with_allow_http(h);
        }
        refuse_plain_http(
            loc,
            b.get_config_value(&K::Endpoint),
            b.get_config_value(&K::Client(ClientConfigKey::AllowHttp)),
            "AWS_ALLOW_HTTP",
        )?;
        let imds = s3_metadata_endpoint(&b);
        let store = b.build().map_err(config_error(loc))?;
        Ok((Arc::new(store), StoreInfo { imds }))
    }

    /// `b` with every `<prefix>*` environment variable it knows, then the extra options,
    /// applied (`apply` sets one key; unknown keys are skipped).
    fn configured<B: Clone>(
        &self,
        prefix: &str,
        b: B,
        apply: impl Fn(B, &str, &str) -> Option<B> + Copy,
    ) -> B {
        apply_options(from_env(prefix, b, apply), &self.options, apply)
    }

    /// Google Cloud Storage: the environment, then the options.
    fn gcs(
        &self,
        loc: &Location,
        opts: ClientOptions,
        retry: RetryConfig,
    ) -> Result<Arc<dyn ObjectStore>> {
        use object_store::gcp::GoogleCloudStorageBuilder;
        let apply = |b: GoogleCloudStorageBuilder, k: &str, v: &str| {
            k.parse().map(|k| b.with_config(k, v)).ok()
        };
        let b = self
            .configured(
                "GOOGLE_",
                GoogleCloudStorageBuilder::new().with_client_options(opts),
                apply,
            )
            .with_url(loc.store_url())
            .with_retry(retry);
        Ok(Arc::new(b.build().map_err(config_error(loc))?))
    }

    /// Azure Blob Storage: the environment, the options, then `spec.storage` (endpoint,
    /// allowHttp).
    fn azure(
        &self,
        loc: &Location,
        opts: ClientOptions,
        retry: RetryConfig,
    ) -> Result<Arc<dyn ObjectStore>> {
        use object_store::azure::{AzureConfigKey as K, MicrosoftAzureBuilder};
        use object_store::client::ClientConfigKey;
        let apply = |b: MicrosoftAzureBuilder, k: &str, v: &str| {
            k.parse().map(|k| b.with_config(k, v)).ok()
        };
        let mut b = self
            .configured(
                "AZURE_",
                MicrosoftAzureBuilder::new().with_client_options(opts),
                apply,
            )
            .with_url(loc.store_url())
            .with_retry(retry);
        if let Some(e) = &self.spec.endpoint {
            b = b.with_endpoint(e.clone());
        }
        if let Some(h) = self.spec.allow_http {
            b = b.with_allow_http(h);
        }
        refuse_plain_http(
            loc,
            b.get_config_value(&K::Endpoint),
            b.get_config_value(&K::Client(ClientConfigKey::AllowHttp)),
            "AZURE_ALLOW_HTTP",
        )?;
        Ok(Arc::new(b.build().map_err(config_error(loc))?))
    }
}

/// The instance metadata endpoint an S3 client without configured credentials will ask
/// (None when credentials are configured or signing is skipped).
fn s3_metadata_endpoint(b: &object_store::aws::AmazonS3Builder) -> Option<String> {
    use object_store::aws::AmazonS3ConfigKey as K;
    let has = |k: K| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
    let skip_signature = b
        .get_config_value(&K::SkipSignature)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    // With none of these, object_store asks the instance metadata endpoint.
    let configured = skip_signature
        || has(K::AccessKeyId)
        || has(K::SecretAccessKey)
        || (has(K::WebIdentityTokenFile) && has(K::RoleArn))
        || has(K::ContainerCredentialsRelativeUri)
        || has(K::ContainerCredentialsFullUri);
    (!configured).then(|| {
        b.get_config_value(&K::MetadataEndpoint)
            .unwrap_or_else(|| "http://169.254.169.254".into())
            .trim_end_matches('/')
            .to_string()
    })
}

/// A builder's refusal, naming the credential variables set (never their values).
fn config_error(loc: &Location) -> impl Fn(object_store::Error) -> Error + '_ {
    |source| Error::Config {
        uri: loc.uri.clone(),
        credentials: credential_source(loc.scheme),
        source: Cause::new(source),
    }
}

fn plain_http_error(loc: &Location, endpoint: &str, setting: &str) -> Error {
    Error::Misconfigured {
        uri: loc.uri.clone(),
        what: format!(
            "the storage endpoint {} is plain http, which is refused unless allowed: set \
             spec.storage.allowHttp: true ({setting}), or use an https:// endpoint",
            endpoint_origin(endpoint)
        ),
    }
}

/// Refuses a plain http `endpoint` unless the builder's `allow_http` setting is true;
/// `variable` is the environment variable that would allow it.
fn refuse_plain_http(
    loc: &Location,
    endpoint: Option<String>,
    allow_http: Option<String>,
    variable: &str,
) -> Result<()> {
    let allowed = allow_http.is_some_and(|v| v.eq_ignore_ascii_case("true"));
    match endpoint {
        Some(e) if is_plain_http(&e) && !allowed => {
            Err(plain_http_error(loc, &e, &format!("or {variable}=true")))
        }
        _ => Ok(()),
    }
}

fn is_plain_http(endpoint: &str) -> bool {
    endpoint
        .trim()
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
}

/// `scheme://host:port` of an endpoint (no user info, path or query).
fn endpoint_origin(endpoint: &str) -> String {
    match url::Url::parse(endpoint.trim()) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}", u.scheme(), u.host_str().unwrap_or(""))
        }
        Err(_) => "(unparsable endpoint)".into(),
    }
}

/// Applies every `<PREFIX>*` environment variable the builder knows (as object_store's own
/// `from_env` does), on top of a builder that already has our client options.
fn from_env<B: Clone>(prefix: &str, mut b: B, apply: impl Fn(B, &str, &str) -> Option<B>) -> B {
    for (k, v) in std::env::vars() {
        if k.starts_with(prefix)
            && let Some(next) = apply(b.clone(), &k.to_ascii_lowercase(), &v)
        {
            b = next;
        }
    }
    b
}

/// Applies the keys of `options` the builder knows.
fn apply_options<B: Clone>(
    mut b: B,
    options: &[(String, String)],
    apply: impl Fn(B, &str, &str) -> Option<B>,
) -> B {
    for (k, v) in options {
        if let Some(next) = apply(b.clone(), k, v) {
            b = next;
        }
    }
    b
}
