//! Signed evaluation evidence: an in-toto Statement (v1) about the promoted model's files,
//! whose predicate records the evaluation that justified the promotion, in a DSSE envelope
//! signed with an Ed25519 or ECDSA P-256 key.
//!
//! - Statement: <https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md>
//! - DSSE: <https://github.com/secure-systems-lab/dsse/blob/master/envelope.md>; what is signed
//!   is the pre-authentication encoding `PAE(payloadType, payload)`, never the JSON.
//!
//! Keys are PEM: the private key PKCS#8 (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey
//! -algorithm ed25519` or `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
//! write it), the public key SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`, `openssl pkey
//! -pubout`). ECDSA signatures are ASN.1 DER, as cosign and securesystemslib write them.
//!
//! A run reads its key before any work starts ([`signing_key`]) and seals a passing result's
//! evidence before anything is promoted ([`seal`]).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The predicate kompress writes: the evaluation behind a promotion.
pub const PREDICATE_TYPE: &str = "https://kompress.dev/attestation/evaluation/v1";
/// How an envelope's file name ends (`<promoteTo>/sha256-<digest>/evidence/<run-id>.intoto.json`).
pub const FILE_SUFFIX: &str = ".intoto.json";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("signing key `{source_name}`: {reason}")]
    Key { source_name: String, reason: String },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("evidence is not a DSSE envelope: {0}")]
    Malformed(String),
    #[error("no signature in the envelope verifies with the given key (keyid {keyid})")]
    BadSignature { keyid: String },
    #[error("the envelope's payloadType is `{0}`, not `{PAYLOAD_TYPE}`: not an in-toto statement")]
    PayloadType(String),
}

/// An in-toto Statement v1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: serde_json::Value,
}

/// A file the statement is about, by digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Subject {
    pub name: String,
    /// Algorithm -> lowercase hex, e.g. {"sha256": "..."}.
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    pub fn sha256(name: &str, hex: &str) -> Self {
        Self {
            name: name.into(),
            digest: BTreeMap::from([("sha256".to_string(), hex.to_string())]),
        }
    }
}

impl Statement {
    pub fn new(subject: Vec<Subject>, predicate: serde_json::Value) -> Self {
        Self {
            type_: STATEMENT_TYPE.into(),
            subject,
            predicate_type: PREDICATE_TYPE.into(),
            predicate,
        }
    }
}

/// A DSSE envelope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 (standard, padded) of the payload bytes.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnvelopeSignature {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyid: String,
    /// Base64 of the signature bytes.
    pub sig: String,
}

/// DSSE's pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// DER SubjectPublicKeyInfo prefixes of the two supported key types: everything before the
/// raw public key (32 bytes Ed25519; 65 bytes, an uncompressed P-256 point).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Algorithm {
    #[serde(rename = "ed25519")]
    Ed25519,
    #[serde(rename = "ecdsa-p256-sha256")]
    EcdsaP256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256 => "ecdsa-p256-sha256",
        }
    }
}

fn spki(alg: Algorithm, raw: &[u8]) -> Vec<u8> {
    let prefix: &[u8] = match alg {
        Algorithm::Ed25519 => &ED25519_SPKI_PREFIX,
        Algorithm::EcdsaP256 => &P256_SPKI_PREFIX,
    };
    [prefix, raw].concat()
}

/// The key id written into signatures: sha256 of the public key's DER SubjectPublicKeyInfo
/// (what `openssl pkey -pubout -outform DER | sha256sum` prints).
fn keyid_of(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

fn pem_block(text: &[u8], want: &str, source_name: &str) -> Result<Vec<u8>, Error> {
    let key_err = |reason: String| Error::Key {
        source_name: source_name.into(),
        reason,
    };
    let blocks = pem::parse_many(text).map_err(|e| key_err(format!("not PEM ({e})")))?;
    let found: Vec<String> = blocks.iter().map(|b| b.tag().to_string()).collect();
    blocks
        .into_iter()
        .find(|b| b.tag() == want)
        .map(|b| b.into_contents())
        .ok_or_else(|| {
            key_err(format!(
                "no `-----BEGIN {want}-----` block (found: {}); {}",
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                },
                if want == "PRIVATE KEY" {
                    "write the key as unencrypted PKCS#8, e.g. `openssl genpkey -algorithm ed25519 -out key.pem`, or convert one with `openssl pkcs8 -topk8 -nocrypt`"
                } else {
                    "give the public key as SubjectPublicKeyInfo PEM: `openssl pkey -in key.pem -pubout`"
                }
            ))
        })
}

/// A private key that signs envelopes.
pub struct SigningKey {
    alg: Algorithm,
    inner: Inner,
    spki: Vec<u8>,
}

enum Inner {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair, SystemRandom),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("keyid", &self.keyid())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses an unencrypted PKCS#8 PEM private key, Ed25519 or ECDSA P-256. `source_name`
    /// (a file or Secret) is what errors name; key bytes never appear in them.
    pub fn from_pem(text: &[u8], source_name: &str) -> Result<Self, Error> {
        let der = pem_block(text, "PRIVATE KEY", source_name)?;
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            let spki = spki(Algorithm::Ed25519, k.public_key().as_ref());
            return Ok(Self {
                alg: Algorithm::Ed25519,
                inner: Inner::Ed25519(k),
                spki,
            });
        }
        let rng = SystemRandom::new();
        match EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng) {
            Ok(k) => {
                let spki = spki(Algorithm::EcdsaP256, k.public_key().as_ref());
                Ok(Self {
                    alg: Algorithm::EcdsaP256,
                    inner: Inner::P256(k, rng),
                    spki,
                })
            }
            Err(e) => Err(Error::Key {
                source_name: source_name.into(),
                reason: format!(
                    "not an Ed25519 or ECDSA P-256 PKCS#8 private key ({e}); RSA and other curves are not supported"
                ),
            }),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn keyid(&self) -> String {
        keyid_of(&self.spki)
    }

    /// The public key as SubjectPublicKeyInfo PEM (what `kompress verify --key` takes).
    pub fn public_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki.clone()))
    }

    fn sign_bytes(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.inner {
            Inner::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
            Inner::P256(k, rng) => k
                .sign(rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| Error::Sign(e.to_string())),
        }
    }

    /// Signs a statement into a DSSE envelope. The payload is the statement's JSON bytes as
    /// they are signed (no canonicalisation needed: verifiers check those exact bytes).
    pub fn sign(&self, statement: &Statement) -> Result<Envelope, Error> {
        let payload = serde_json::to_vec(statement).map_err(|e| Error::Sign(e.to_string()))?;
        let sig = self.sign_bytes(&pae(PAYLOAD_TYPE, &payload))?;
        Ok(Envelope {
            payload_type: PAYLOAD_TYPE.into(),
            payload: B64.encode(&payload),
            signatures: vec![EnvelopeSignature {
                keyid: self.keyid(),
                sig: B64.encode(sig),
            }],
        })
    }
}

/// A public key that verifies envelopes.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    raw: Vec<u8>,
    keyid: String,
}

impl VerifyingKey {
    /// Parses a SubjectPublicKeyInfo PEM public key (Ed25519 or ECDSA P-256).
    pub fn from_pem(text: &[u8], source_name: &str) -> Result<Self, Error> {
        let der = pem_block(text, "PUBLIC KEY", source_name)?;
        let (alg, raw) = if let Some(raw) = der.strip_prefix(&ED25519_SPKI_PREFIX[..])
            && raw.len() == 32
        {
            (Algorithm::Ed25519, raw)
        } else if let Some(raw) = der.strip_prefix(&P256_SPKI_PREFIX[..])
            && raw.len() == 65
        {
            (Algorithm::EcdsaP256, raw)
        } else {
            return Err(Error::Key {
                source_name: source_name.into(),
                reason: "not an Ed25519 or uncompressed ECDSA P-256 public key".into(),
            });
        };
        Ok(Self {
            alg,
            raw: raw.to_vec(),
            keyid: keyid_of(&der),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// Checks that some signature of the envelope verifies with this key over PAE(payloadType,
    /// payload), and returns the statement it carries. The keyid is a hint only: every
    /// signature is tried, and only the cryptographic check counts.
    pub fn verify(&self, envelope: &Envelope) -> Result<Statement, Error> {
        if envelope.payload_type != PAYLOAD_TYPE {
            return Err(Error::PayloadType(envelope.payload_type.clone()));
        }
        let payload = B64
            .decode(&envelope.payload)
            .map_err(|e| Error::Malformed(format!("payload is not base64 ({e})")))?;
        let msg = pae(&envelope.payload_type, &payload);
        let alg: &dyn signature::VerificationAlgorithm = match self.alg {
            Algorithm::Ed25519 => &signature::ED25519,
            Algorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        };
        let key = UnparsedPublicKey::new(alg, &self.raw);
        let ok = envelope.signatures.iter().any(|s| {
            B64.decode(&s.sig)
                .is_ok_and(|sig| key.verify(&msg, &sig).is_ok())
        });
        if !ok {
            return Err(Error::BadSignature {
                keyid: self.keyid.clone(),
            });
        }
        serde_json::from_slice(&payload)
            .map_err(|e| Error::Malformed(format!("payload is not an in-toto statement ({e})")))
    }
}

/// Reads an envelope from JSON bytes.
pub fn parse_envelope(bytes: &[u8]) -> Result<Envelope, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Malformed(e.to_string()))
}

/// The statement an envelope carries, without checking any signature (for reading an
/// unsigned envelope, or showing what a bad one claims).
pub fn unverified_statement(envelope: &Envelope) -> Result<Statement, Error> {
    // Unsigned is not untyped: the payload must still say it is an in-toto statement.
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(Error::PayloadType(envelope.payload_type.clone()));
    }
    let payload = B64
        .decode(&envelope.payload)
        .map_err(|e| Error::Malformed(format!("payload is not base64 ({e})")))?;
    serde_json::from_slice(&payload)
        .map_err(|e| Error::Malformed(format!("payload is not an in-toto statement ({e})")))
}

/// The environment variable the controller sets in the worker pod: the path where it mounted
/// `spec.output.signing.secretRef`'s key.
pub const SIGNING_KEY_ENV: &str = "KOMPRESS_SIGNING_KEY_FILE";

/// Largest key file read (a PEM key is well under 1 KiB).
pub const MAX_KEY_BYTES: u64 = 64 * 1024;

/// The signing key (`field` says which setting named it) cannot be read or used; nothing is
/// promoted.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SigningError {
    pub field: String,
    pub reason: String,
}

/// The evidence's signing key, read and parsed before any work starts (a bad key fails the
/// job at once, not after an hour of search). None when `spec.output.signing` is unset.
pub fn signing_key(
    spec: &crate::api::CompressionJobSpec,
) -> Result<Option<SigningKey>, SigningError> {
    let Some(signing) = &spec.output.signing else {
        return Ok(None);
    };
    let (path, field, source_name) = match (&signing.key_file, &signing.secret_ref) {
        (Some(f), _) => (
            std::path::PathBuf::from(f),
            "spec.output.signing.keyFile".to_string(),
            f.clone(),
        ),
        (None, Some(r)) => match std::env::var_os(SIGNING_KEY_ENV) {
            Some(p) => (
                std::path::PathBuf::from(&p),
                "spec.output.signing.secretRef".to_string(),
                format!("key `{}` of Secret `{}`", r.key(), r.name),
            ),
            None => {
                return Err(SigningError {
                    field: "spec.output.signing.secretRef".into(),
                    reason: format!(
                        "Secret `{}` is mounted by the controller in a cluster; outside one set \
                         spec.output.signing.keyFile, or {SIGNING_KEY_ENV} to the key's path",
                        r.name
                    ),
                });
            }
        },
        (None, None) => {
            return Err(SigningError {
                field: "spec.output.signing".into(),
                reason: "set secretRef or keyFile".into(),
            });
        }
    };
    let text = crate::onnx::read_small(&path, MAX_KEY_BYTES).map_err(|e| SigningError {
        field: field.clone(),
        reason: format!("cannot read {source_name} ({e})"),
    })?;
    SigningKey::from_pem(&text, &source_name)
        .map(Some)
        .map_err(|e| SigningError {
            field,
            reason: e.to_string(),
        })
}

/// A promotion's evidence, sealed (and signed, when a key is set) before anything is promoted.
pub struct Sealed {
    /// The DSSE envelope's JSON.
    pub bytes: Vec<u8>,
    /// The signing key's id; None when unsigned.
    pub keyid: Option<String>,
    /// The run's id: the envelope is stored as `evidence/<run-id>.intoto.json`.
    pub run_id: String,
}

/// Seals a passing result's evidence: an in-toto statement whose subjects are the candidate's
/// files and whose predicate is the report's evaluation, in a DSSE envelope signed by `key`
/// (or with no signature when none is set). A target's own subject (an OCI promotion's model
/// manifest: `oci://REGISTRY/REPOSITORY`, `sha256:<hex>`) is a subject too.
pub fn seal(
    predicate: &serde_json::Value,
    files: &[super::File],
    target_subject: Option<(&str, &str)>,
    key: Option<&SigningKey>,
    run_id: &str,
) -> Result<Sealed, SigningError> {
    let mut subjects: Vec<Subject> = files
        .iter()
        .map(|(name, _, sha)| Subject::sha256(name, sha))
        .collect();
    if let Some((repo, digest)) = target_subject {
        subjects.push(Subject::sha256(
            repo,
            digest.strip_prefix("sha256:").unwrap_or(digest),
        ));
    }
    let statement = Statement::new(subjects, predicate.clone());
    let envelope = match key {
        Some(k) => k.sign(&statement).map_err(|e| SigningError {
            field: "spec.output.signing".into(),
            reason: e.to_string(),
        })?,
        None => Envelope {
            payload_type: PAYLOAD_TYPE.into(),
            payload: B64.encode(serde_json::to_vec(&statement).unwrap_or_default()),
            signatures: vec![],
        },
    };
    Ok(Sealed {
        bytes: serde_json::to_vec_pretty(&envelope).unwrap_or_default(),
        keyid: key.map(|k| k.keyid()),
        run_id: run_id.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed25519_pem() -> String {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()))
    }

    fn p256_pem() -> String {
        let rng = SystemRandom::new();
        let doc =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()))
    }

    fn statement() -> Statement {
        Statement::new(
            vec![Subject::sha256("model.onnx", &"ab".repeat(32))],
            serde_json::json!({"verdict": "Passed"}),
        )
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // The DSSE spec's worked example.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn both_key_types_sign_and_verify_and_tampering_fails() {
        for pem_text in [ed25519_pem(), p256_pem()] {
            let sk = SigningKey::from_pem(pem_text.as_bytes(), "key.pem").unwrap();
            let vk = VerifyingKey::from_pem(sk.public_pem().as_bytes(), "pub.pem").unwrap();
            assert_eq!(vk.keyid(), sk.keyid());
            assert_eq!(vk.algorithm(), sk.algorithm());
            let env = sk.sign(&statement()).unwrap();
            assert_eq!(vk.verify(&env).unwrap(), statement());

            // One byte of the payload changed: the signature no longer holds.
            let mut bad = env.clone();
            let mut payload = B64.decode(&bad.payload).unwrap();
            let i = payload.iter().position(|&b| b == b'P').unwrap();
            payload[i] = b'R';
            bad.payload = B64.encode(&payload);
            assert!(matches!(vk.verify(&bad), Err(Error::BadSignature { .. })));

            // Another key of the same type: fails.
            let other = match sk.algorithm() {
                Algorithm::Ed25519 => ed25519_pem(),
                Algorithm::EcdsaP256 => p256_pem(),
            };
            let other = SigningKey::from_pem(other.as_bytes(), "other.pem").unwrap();
            let other_vk = VerifyingKey::from_pem(other.public_pem().as_bytes(), "o").unwrap();
            assert!(matches!(
                other_vk.verify(&env),
                Err(Error::BadSignature { .. })
            ));

            // A different payloadType is refused before any signature is checked.
            let mut typed = env.clone();
            typed.payload_type = "text/plain".into();
            assert!(matches!(vk.verify(&typed), Err(Error::PayloadType(_))));
        }
    }

    #[test]
    fn bad_keys_name_their_source_and_what_to_do() {
        let e = SigningKey::from_pem(b"not a key", "secret ns/signing key key.pem").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("secret ns/signing key key.pem"), "{text}");
        assert!(text.contains("BEGIN PRIVATE KEY"), "{text}");
        // A public key where a private one is expected.
        let sk = SigningKey::from_pem(ed25519_pem().as_bytes(), "k").unwrap();
        let e = SigningKey::from_pem(sk.public_pem().as_bytes(), "pub.pem").unwrap_err();
        assert!(e.to_string().contains("found: PUBLIC KEY"), "{e}");
        // PKCS#8 of garbage.
        let junk = pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            vec![0x30, 0x03, 0x02, 0x01, 0x00],
        ));
        let e = SigningKey::from_pem(junk.as_bytes(), "junk.pem").unwrap_err();
        assert!(e.to_string().contains("Ed25519 or ECDSA P-256"), "{e}");
        let e = VerifyingKey::from_pem(b"", "empty.pem").unwrap_err();
        assert!(e.to_string().contains("empty.pem"), "{e}");
    }
}
