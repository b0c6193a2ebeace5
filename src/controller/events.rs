//! Kubernetes Events (events.k8s.io/v1) with bounded memory.
//!
//! kube-runtime's `Recorder` keeps every Event it published, whole, for six minutes, and walks
//! that whole cache under a write lock on every publish; with thousands of jobs finishing in
//! a few minutes that cache was a large part of the controller's memory and a serial section
//! in every reconcile. This recorder does what the Events API asks of a recorder (a repeat of
//! the same event about the same object within minutes becomes a `series` update of the first,
//! not a new object) while it keeps, for each recent (object, type, action, reason, related),
//! only the Event's name and count: at most [`CAPACITY`] of them, expired ones dropped at most
//! once a minute.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use tokio::sync::Mutex;

/// How long a repeat still counts as the same event (as kube-runtime's and client-go's).
const TTL: SignedDuration = SignedDuration::from_mins(6);
/// The most events remembered for series; past it the older half is forgotten (a repeat of
/// one of those is then a new Event instead of a count: nothing is lost but the grouping).
pub const CAPACITY: usize = 4096;
/// Expired entries are dropped at most this often (not on every publish).
const GC_EVERY: SignedDuration = SignedDuration::from_secs(60);

/// What a repeat needs: where the first Event is, and how many times it was seen.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

#[derive(Default)]
struct Cache {
    seen: HashMap<u64, Seen>,
    next_gc: Option<Timestamp>,
}

impl Cache {
    /// The entry for `key` if it is still within the TTL.
    fn repeat(&mut self, key: u64, now: Timestamp) -> Option<Seen> {
        self.trim(now);
        self.seen.get(&key).filter(|s| s.last + TTL > now).cloned()
    }

    fn trim(&mut self, now: Timestamp) {
        let due = self.next_gc.is_none_or(|t| now >= t);
        if !due && self.seen.len() < CAPACITY {
            return;
        }
        self.seen.retain(|_, s| s.last + TTL > now);
        if self.seen.len() >= CAPACITY {
            let mut lasts: Vec<Timestamp> = self.seen.values().map(|s| s.last).collect();
            lasts.sort_unstable();
            let cut = lasts[lasts.len() / 2];
            self.seen.retain(|_, s| s.last > cut);
        }
        self.next_gc = Some(now + GC_EVERY);
    }

    fn record(&mut self, key: u64, seen: Seen) {
        self.seen.insert(key, seen);
    }
}

/// Publishes Events for one reporting controller; cheap to clone (the cache is shared).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    cache: Arc<Mutex<Cache>>,
}

fn hash_ref(r: &ObjectReference, h: &mut DefaultHasher) {
    (
        &r.api_version,
        &r.kind,
        &r.namespace,
        &r.name,
        &r.uid,
        &r.field_path,
    )
        .hash(h);
}

/// The series key: type, action, reason, the object and the related object (the reporter is
/// the recorder's own). The note is not part of it, as in client-go.
fn key(ev: &Event, regarding: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    matches!(ev.type_, EventType::Warning).hash(&mut h);
    (&ev.action, &ev.reason).hash(&mut h);
    hash_ref(regarding, &mut h);
    if let Some(r) = &ev.secondary {
        hash_ref(r, &mut h);
    }
    h.finish()
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            cache: Default::default(),
        }
    }

    /// Creates the Event about `regarding`, or, for a repeat within six minutes, adds one to
    /// the first one's series.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = key(ev, regarding);
        let repeat = self.cache.lock().await.repeat(key, now);
        let seen = match repeat {
            Some(s) => {
                let count = s.count.saturating_add(1);
                let patch = serde_json::json!({
                    "series": {"count": count, "lastObservedTime": MicroTime(now)}
                });
                Api::<K8sEvent>::namespaced(self.client.clone(), &s.namespace)
                    .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Seen {
                    count,
                    last: now,
                    ..s
                }
            }
            None => {
                let event = self.event(ev, regarding, now);
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let created = Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
                    .create(&PostParams::default(), &event)
                    .await?;
                Seen {
                    namespace,
                    name: created.metadata.name.unwrap_or_default(),
                    count: 1,
                    last: now,
                }
            }
        };
        self.cache.lock().await.record(key, seen);
        Ok(())
    }

    fn event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                // a cluster-scoped object's Events live in `default`, as kube-runtime's do
                namespace: Some(
                    regarding
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn seen(last: Timestamp) -> Seen {
        Seen {
            namespace: "ml".into(),
            name: "digits.1".into(),
            count: 1,
            last,
        }
    }

    fn event(reason: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some("a note".into()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }

    #[test]
    fn a_repeat_within_six_minutes_is_found_and_an_older_one_is_not() {
        let mut c = Cache::default();
        c.record(1, seen(at(0)));
        assert_eq!(c.repeat(1, at(359)).map(|s| s.count), Some(1));
        assert_eq!(c.repeat(1, at(360)), None);
        assert_eq!(c.repeat(2, at(1)), None);
    }

    #[test]
    fn memory_is_bounded_whatever_the_rate() {
        let mut c = Cache::default();
        // far more events than the capacity, all within the TTL
        for i in 0..(4 * CAPACITY as u64) {
            let now = at((i / 100) as i64);
            c.repeat(i, now);
            c.record(i, seen(now));
            assert!(c.seen.len() <= CAPACITY, "{} entries at {i}", c.seen.len());
        }
        // the newest are kept
        let last = 4 * CAPACITY as u64 - 1;
        assert!(c.seen.contains_key(&last));
        // and everything expires
        c.repeat(0, at(100_000));
        assert!(c.seen.is_empty());
    }

    #[test]
    fn the_key_is_the_object_and_reason_not_the_note() {
        let r = ObjectReference {
            kind: Some("CompressionJob".into()),
            namespace: Some("ml".into()),
            name: Some("digits".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let other = ObjectReference {
            name: Some("bert".into()),
            ..r.clone()
        };
        let mut noted = event("Promoted");
        noted.note = Some("another note".into());
        assert_eq!(key(&event("Promoted"), &r), key(&noted, &r));
        assert_ne!(key(&event("Promoted"), &r), key(&event("Rejected"), &r));
        assert_ne!(key(&event("Promoted"), &r), key(&event("Promoted"), &other));
    }
}
