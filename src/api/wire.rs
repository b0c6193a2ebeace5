//! The contract between the worker pod and the controller: how the controller hands the job
//! over (environment variables), what the worker leaves in its termination message, and what
//! its exit code means. Both sides import it from here; neither imports the other.

use super::{JobResult, Phase};
use serde::{Deserialize, Serialize};

/// Exit code for errors that retrying cannot fix (bad spec, bad model, missing object,
/// wrong credentials): sysexits EX_DATAERR. The worker Job's pod failure policy fails the Job
/// at once on it.
pub const EXIT_PERMANENT: i32 = 65;
/// Exit code for errors worth retrying (network, storage unavailable): sysexits EX_TEMPFAIL.
pub const EXIT_TRANSIENT: i32 = 75;
/// Exit code of an internal error (a bug: a panic caught at the top): sysexits EX_SOFTWARE.
pub const EXIT_INTERNAL: i32 = 70;

/// The exit code of an error that `permanent` says retrying can (not) fix.
pub fn exit_code(permanent: bool) -> i32 {
    if permanent {
        EXIT_PERMANENT
    } else {
        EXIT_TRANSIENT
    }
}

/// Environment variables the controller sets on the worker container and `kompress worker`
/// reads.
pub mod env {
    /// The CompressionJob (JSON): identity and spec.
    pub const JOB: &str = "KOMPRESS_JOB";
    /// Prefix of the run's folder under `output.uri/runs/`.
    pub const RUN_ID: &str = "KOMPRESS_RUN_ID";
    /// Where the scratch folder is made (the emptyDir mount).
    pub const SCRATCH: &str = "KOMPRESS_SCRATCH";
    /// The execution provider of GPU workers (`cuda`).
    pub const EXECUTION_PROVIDER: &str = "KOMPRESS_EXECUTION_PROVIDER";
}

/// Kubelet's cap on a termination message (bytes).
pub const TERMINATION_LIMIT: usize = 4096;

/// Longest `message` kept in a termination message (bytes), so that a result still fits.
const MESSAGE_LIMIT: usize = 1500;

/// What the worker leaves in its termination message (kept under kubelet's 4096-byte cap).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerMessage {
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    /// An `api::reason` constant: a pipeline error category or a worker failure reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl WorkerMessage {
    /// A failed run: why (`reason`), whether retrying can help, and the message.
    pub fn failed(reason: &str, permanent: bool, message: String) -> Self {
        Self {
            phase: Phase::Failed,
            result: None,
            reason: Some(reason.into()),
            permanent: Some(permanent),
            message: Some(message),
        }
    }

    /// A finished run: the gate's verdict decides the phase.
    pub fn finished(result: JobResult) -> Self {
        let phase = if result.verdict == super::Verdict::Passed {
            Phase::Succeeded
        } else {
            Phase::Rejected
        };
        Self {
            phase,
            result: Some(result),
            reason: None,
            permanent: None,
            message: None,
        }
    }

    /// Compact JSON within the termination-message limit: long messages are cut, and if the
    /// result alone is too large its per-model metric details go first.
    pub fn to_json(&self) -> String {
        let mut m = self.clone();
        if let Some(msg) = &mut m.message
            && msg.len() > MESSAGE_LIMIT
        {
            let cut = (0..=MESSAGE_LIMIT)
                .rev()
                .find(|&i| msg.is_char_boundary(i))
                .unwrap_or(0);
            msg.truncate(cut);
            msg.push('…');
        }
        let s = serde_json::to_string(&m).expect("message serialises");
        if s.len() <= TERMINATION_LIMIT {
            return s;
        }
        // Per-slice metrics first (the report has them).
        if let Some(r) = &mut m.result {
            r.baseline.slices.clear();
            r.candidate.slices.clear();
        }
        let s = serde_json::to_string(&m).expect("message serialises");
        if s.len() <= TERMINATION_LIMIT {
            return s;
        }
        if let Some(r) = &mut m.result {
            r.report.get_or_insert_with(String::new);
            r.baseline = Default::default();
            r.candidate = Default::default();
        }
        let s = serde_json::to_string(&m).expect("message serialises");
        if s.len() <= TERMINATION_LIMIT {
            return s;
        }
        // Then a search's layer names (the report has them all).
        if let Some(search) = m.result.as_mut().and_then(|r| r.search.as_mut()) {
            search.sensitive_layers.clear();
        }
        serde_json::to_string(&m).expect("message serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary_within_the_limit() {
        let m = WorkerMessage::failed("StorageError", true, "é".repeat(5000));
        let json = m.to_json();
        assert!(json.len() <= TERMINATION_LIMIT, "{}", json.len());
        let back: WorkerMessage = serde_json::from_str(&json).unwrap();
        assert!(back.message.unwrap().ends_with('…'));
        assert_eq!(back.reason.as_deref(), Some("StorageError"));
    }

    #[test]
    fn exit_codes_are_the_sysexits_ones() {
        assert_eq!(
            (exit_code(true), exit_code(false), EXIT_INTERNAL),
            (65, 75, 70)
        );
    }
}
