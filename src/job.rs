//! The job message: the contract between the planner (which writes it), the workers (which read
//! it, and write it again when they move a failed job to a retry queue or the DLQ) and `dlq`
//! (which reads those moves back). It owns the message's body, its headers, and how each is read
//! and written; scripts and other tools read the same JSON and header names, so neither changes.
//!
//! - The body is a [`Job`] as JSON (`{"viz": …, "batch": …}`): [`Job::encode`],
//!   [`Job::parse`] ([`BadBody`] for a body that is no job), and [`Job::message`] for the
//!   planner's publish (the message id `<batch>/<viz>` included).
//! - The header names are in [`headers`]: ours (`x-vizhub-*`) and the two the broker sets that
//!   we read or drop.
//! - Reading a delivery's headers: [`attempt`] (the worker's attempt counter),
//!   [`deliveries_before`] (the broker's delivery count), and [`Stamps::read`] (everything the
//!   failure headers say, for operators).
//! - Writing them: [`Failure::retry_headers`] and [`Failure::dead_letter_headers`] (what a failed
//!   delivery is moved with, [`fingerprint`] included), and [`reset_for_requeue`] (what a
//!   requeued dead letter drops).
//!
//! Error kinds are [`ErrorKind`]'s; header values are [`HeaderValue`], as the broker carries them.

use crate::broker::{HeaderValue, Message};
use crate::ids;
use crate::outcome::ErrorKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A message's headers, by name.
pub type Headers = BTreeMap<String, HeaderValue>;

/// Header names of the job message.
pub mod headers {
    /// How many attempts failed so far (the delivery that carries it is attempt `n + 1`).
    pub const ATTEMPTS: &str = "x-vizhub-attempts";
    /// The [`crate::outcome::ErrorKind`] of the last failure.
    pub const ERROR_KIND: &str = "x-vizhub-error-kind";
    pub const ERROR_MESSAGE: &str = "x-vizhub-error-message";
    /// On dead letters only: groups failures with the same cause ([`super::fingerprint`]).
    pub const FINGERPRINT: &str = "x-vizhub-fingerprint";
    /// Unix seconds of the first failure of all the job's attempts.
    pub const FIRST_FAILURE: &str = "x-vizhub-first-failure";
    /// Unix seconds of the last failure.
    pub const LAST_FAILURE: &str = "x-vizhub-last-failure";
    pub const VIZ: &str = "x-vizhub-viz";
    /// Set by the broker (quorum queues) on a redelivery: deliveries before this one that ended
    /// without an ack.
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
    /// Set by the broker when it dead-letters a message (a retry queue's TTL sends it back).
    pub const DEATH: &str = "x-death";
}

/// One job on the work queue: the message body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub viz: String,
    pub batch: Option<String>,
}

/// At most this many bytes of a bad body are quoted in its error.
const QUOTED_BYTES: usize = 200;

/// A message body that is no [`Job`]: the JSON error, and the body's start.
#[derive(Debug, thiserror::Error)]
#[error("{source}: {quoted}")]
pub struct BadBody {
    source: serde_json::Error,
    /// The first [`QUOTED_BYTES`] bytes of the body (lossy UTF-8).
    quoted: String,
}

impl Job {
    /// The body, as JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("jobs serialize")
    }

    /// The job a body holds.
    pub fn parse(body: &[u8]) -> Result<Job, BadBody> {
        serde_json::from_slice(body).map_err(|source| BadBody {
            source,
            quoted: String::from_utf8_lossy(&body[..body.len().min(QUOTED_BYTES)]).into_owned(),
        })
    }

    /// `<batch>/<viz>`: the same job published twice in a batch has the same id. None without
    /// a batch.
    pub fn message_id(&self) -> Option<String> {
        self.batch.as_ref().map(|b| format!("{b}/{}", self.viz))
    }

    /// The message the planner publishes: the body and its id, no headers.
    pub fn message(&self) -> Message {
        Message {
            body: self.encode(),
            message_id: self.message_id(),
            ..Default::default()
        }
    }
}

/// This delivery's attempt number (1 for a first delivery), from [`headers::ATTEMPTS`]. Headers
/// come from outside (a hand-made message, a requeue tool): only an integer counts, and no value
/// overflows or goes below 1 here.
pub fn attempt(h: &Headers) -> i64 {
    match h.get(headers::ATTEMPTS) {
        Some(HeaderValue::Int(n)) => (*n).max(0),
        _ => 0,
    }
    .saturating_add(1)
}

/// How many times the broker delivered this message before without an ack
/// ([`headers::DELIVERY_COUNT`]; 0 on a first delivery).
pub fn deliveries_before(h: &Headers) -> i64 {
    match h.get(headers::DELIVERY_COUNT) {
        Some(HeaderValue::Int(n)) => (*n).max(0),
        _ => 0,
    }
}

/// What the failure headers of a message say, read for operators (`dlq`): leniently, since a
/// message may come from elsewhere. A text header written as a number reads as its digits, a
/// number written as text as its value, and an empty text as absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamps {
    pub viz: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub fingerprint: Option<String>,
    /// Our attempts only (the broker's delivery count also counts every time a browse returned
    /// a dead letter, so it says nothing about the job).
    pub attempts: Option<i64>,
    pub first_failure: Option<i64>,
    pub last_failure: Option<i64>,
}

impl Stamps {
    pub fn read(h: &Headers) -> Stamps {
        let text = |k: &str| match h.get(k) {
            Some(HeaderValue::Str(s)) if !s.is_empty() => Some(s.clone()),
            Some(HeaderValue::Int(n)) => Some(n.to_string()),
            Some(HeaderValue::Str(_)) | None => None,
        };
        let int = |k: &str| match h.get(k) {
            Some(HeaderValue::Int(n)) => Some(*n),
            Some(HeaderValue::Str(s)) => s.parse().ok(),
            None => None,
        };
        Stamps {
            viz: text(headers::VIZ),
            error_kind: text(headers::ERROR_KIND),
            error_message: text(headers::ERROR_MESSAGE),
            fingerprint: text(headers::FINGERPRINT),
            attempts: int(headers::ATTEMPTS),
            first_failure: int(headers::FIRST_FAILURE),
            last_failure: int(headers::LAST_FAILURE),
        }
    }
}

/// A failed delivery, as the headers it is moved with (to a retry queue or the DLQ) record it.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// The viz the delivery names (`<unknown>` for a bad body).
    pub viz: &'a str,
    /// This delivery's attempt number ([`attempt`]).
    pub attempt: i64,
    pub kind: ErrorKind,
    pub message: &'a str,
    /// When it failed, Unix seconds.
    pub at: i64,
}

impl Failure<'_> {
    /// The headers a move to a delayed-retry queue adds to the delivery's own (`received`):
    /// attempts, viz, error kind and message, last failure, and the first failure unless
    /// `received` has one already (it stays on the message through all its attempts).
    pub fn retry_headers(&self, received: &Headers) -> Headers {
        let mut h = Headers::new();
        h.insert(headers::ATTEMPTS.into(), HeaderValue::Int(self.attempt));
        h.insert(headers::VIZ.into(), HeaderValue::Str(self.viz.into()));
        h.insert(
            headers::ERROR_KIND.into(),
            HeaderValue::Str(self.kind.as_str().into()),
        );
        h.insert(
            headers::ERROR_MESSAGE.into(),
            HeaderValue::Str(self.message.into()),
        );
        h.insert(headers::LAST_FAILURE.into(), HeaderValue::Int(self.at));
        if !received.contains_key(headers::FIRST_FAILURE) {
            h.insert(headers::FIRST_FAILURE.into(), HeaderValue::Int(self.at));
        }
        h
    }

    /// The headers a move to the DLQ adds: [`Failure::retry_headers`] and the fingerprint.
    pub fn dead_letter_headers(&self, received: &Headers) -> Headers {
        let mut h = self.retry_headers(received);
        h.insert(
            headers::FINGERPRINT.into(),
            HeaderValue::Str(fingerprint(self.kind.as_str(), self.message, self.viz)),
        );
        h
    }
}

/// Groups failures that have the same cause: the error kind plus its message with ids and
/// numbers blanked out.
pub fn fingerprint(kind: &str, message: &str, viz: &str) -> String {
    let generic: String = message
        .replace(viz, "<viz>")
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    format!(
        "{kind}-{}",
        &ids::fingerprint(&serde_json::json!([kind, generic]))[..8]
    )
}

/// A dead letter going back to the work queue drops its retry bookkeeping (our attempts, the
/// broker's delivery count and deaths), so the job gets its full retry budget again. What it
/// failed with (kind, message, first and last failure) stays.
pub fn reset_for_requeue(h: &mut Headers) {
    h.retain(|k, _| {
        !k.starts_with(headers::ATTEMPTS)
            && !k.starts_with(headers::DELIVERY_COUNT)
            && !k.starts_with(headers::DEATH)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(viz: &str, batch: Option<&str>) -> Job {
        Job {
            viz: viz.into(),
            batch: batch.map(Into::into),
        }
    }

    fn int(name: &str, n: i64) -> Headers {
        Headers::from([(name.to_string(), HeaderValue::Int(n))])
    }

    #[test]
    fn the_body_round_trips_as_the_same_json() {
        for j in [job("v1", Some("all-0123")), job("v2", None)] {
            let body = j.encode();
            assert_eq!(Job::parse(&body).unwrap(), j);
            // The shape scripts and other tools publish and read.
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                json,
                serde_json::json!({"viz": j.viz, "batch": j.batch}),
                "{j:?}"
            );
        }
        assert_eq!(
            job("v1", Some("b")).encode(),
            br#"{"viz":"v1","batch":"b"}"#
        );
        // What other tools write: no batch at all, or fields we do not know.
        assert_eq!(Job::parse(br#"{"viz":"v"}"#).unwrap(), job("v", None));
        assert_eq!(
            Job::parse(br#"{"viz":"v","batch":"b","extra":1}"#).unwrap(),
            job("v", Some("b"))
        );
    }

    #[test]
    fn a_bad_body_is_an_error_quoting_its_start() {
        for body in [
            &b"not json"[..],
            b"{\"batch\": null}",
            b"",
            b"[1,2]",
            b"{\"viz\": 3}",
        ] {
            let e = Job::parse(body).unwrap_err().to_string();
            assert!(
                e.ends_with(&*String::from_utf8_lossy(body)),
                "{body:?}: {e}"
            );
        }
        // Only the first 200 bytes of the body are quoted.
        let long = vec![b'x'; 10_000];
        let e = Job::parse(&long).unwrap_err().to_string();
        assert!(e.len() < 400, "{}", e.len());
        assert!(e.ends_with(&"x".repeat(QUOTED_BYTES)));
        // Invalid UTF-8, or a cut in the middle of a character, quotes lossily.
        let mut cut = vec![b'a'; QUOTED_BYTES - 1];
        cut.extend("é".as_bytes());
        assert!(Job::parse(&cut)
            .unwrap_err()
            .to_string()
            .ends_with('\u{fffd}'));
    }

    #[test]
    fn the_planner_message_has_the_body_and_a_batch_scoped_id() {
        let m = job("v1", Some("b1")).message();
        assert_eq!(Job::parse(&m.body).unwrap(), job("v1", Some("b1")));
        assert_eq!(m.message_id.as_deref(), Some("b1/v1"));
        assert!(m.headers.is_empty());
        assert_eq!(job("v1", None).message_id(), None);
    }

    #[test]
    fn attempt_numbers_never_overflow_or_go_below_one() {
        let with = |v: HeaderValue| Headers::from([(headers::ATTEMPTS.to_string(), v)]);
        assert_eq!(attempt(&Headers::new()), 1);
        assert_eq!(attempt(&with(HeaderValue::Int(2))), 3);
        assert_eq!(attempt(&with(HeaderValue::Int(i64::MAX))), i64::MAX);
        assert_eq!(attempt(&with(HeaderValue::Int(i64::MIN))), 1);
        assert_eq!(attempt(&with(HeaderValue::Int(-5))), 1);
        // Only an integer counts for the worker.
        assert_eq!(attempt(&with(HeaderValue::Str("x".into()))), 1);
        assert_eq!(attempt(&with(HeaderValue::Str("2".into()))), 1);
    }

    #[test]
    fn delivery_counts_never_go_below_zero() {
        assert_eq!(deliveries_before(&Headers::new()), 0);
        assert_eq!(deliveries_before(&int(headers::DELIVERY_COUNT, 4)), 4);
        assert_eq!(
            deliveries_before(&int(headers::DELIVERY_COUNT, i64::MAX)),
            i64::MAX
        );
        assert_eq!(deliveries_before(&int(headers::DELIVERY_COUNT, -1)), 0);
        let text = Headers::from([(
            headers::DELIVERY_COUNT.to_string(),
            HeaderValue::Str("9".into()),
        )]);
        assert_eq!(deliveries_before(&text), 0);
    }

    const AT: i64 = 1_700_000_000;

    fn failure<'a>(viz: &'a str, attempt: i64, message: &'a str) -> Failure<'a> {
        Failure {
            viz,
            attempt,
            kind: ErrorKind::Raced,
            message,
            at: AT,
        }
    }

    #[test]
    fn failure_headers_round_trip_through_the_stamps() {
        let f = failure("viz1", 2, "viz viz1: lost 3 races");
        let retry = f.retry_headers(&Headers::new());
        assert_eq!(
            retry.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                headers::ATTEMPTS,
                headers::ERROR_KIND,
                headers::ERROR_MESSAGE,
                headers::FIRST_FAILURE,
                headers::LAST_FAILURE,
                headers::VIZ,
            ]
        );
        let read = Stamps::read(&retry);
        assert_eq!(
            read,
            Stamps {
                viz: Some("viz1".into()),
                error_kind: Some("raced".into()),
                error_message: Some("viz viz1: lost 3 races".into()),
                fingerprint: None,
                attempts: Some(2),
                first_failure: Some(AT),
                last_failure: Some(AT),
            }
        );
        // Read back by the next delivery: its attempt is the next one.
        assert_eq!(attempt(&retry), 3);
        let dead = f.dead_letter_headers(&Headers::new());
        let read = Stamps::read(&dead);
        assert_eq!(
            read.fingerprint,
            Some(fingerprint("raced", "viz viz1: lost 3 races", "viz1"))
        );
        // Everything else as on a retry.
        let mut without = dead.clone();
        without.remove(headers::FINGERPRINT);
        assert_eq!(without, retry);
    }

    #[test]
    fn the_first_failure_stays_on_the_message() {
        let received = int(headers::FIRST_FAILURE, 42);
        let f = failure("v", 3, "m");
        for extra in [f.retry_headers(&received), f.dead_letter_headers(&received)] {
            assert!(!extra.contains_key(headers::FIRST_FAILURE));
            // As a move publishes it: the delivery's headers, then the new ones.
            let mut moved = received.clone();
            moved.extend(extra);
            let read = Stamps::read(&moved);
            assert_eq!(read.first_failure, Some(42));
            assert_eq!(read.last_failure, Some(AT));
        }
    }

    #[test]
    fn stamps_read_leniently() {
        assert_eq!(Stamps::read(&Headers::new()), Stamps::default());
        let h = Headers::from([
            (headers::VIZ.to_string(), HeaderValue::Str(String::new())),
            (headers::ERROR_KIND.to_string(), HeaderValue::Int(7)),
            (headers::ATTEMPTS.to_string(), HeaderValue::Str("4".into())),
            (
                headers::FIRST_FAILURE.to_string(),
                HeaderValue::Str("soon".into()),
            ),
            (
                headers::LAST_FAILURE.to_string(),
                HeaderValue::Int(i64::MIN),
            ),
        ]);
        let s = Stamps::read(&h);
        assert_eq!(s.viz, None, "empty text reads as absent");
        assert_eq!(s.error_kind.as_deref(), Some("7"));
        assert_eq!(s.attempts, Some(4));
        assert_eq!(s.first_failure, None);
        assert_eq!(s.last_failure, Some(i64::MIN));
    }

    #[test]
    fn fingerprints_blank_out_ids_and_numbers() {
        let a = fingerprint("v3_write", "viz abc: timeout after 30 s", "abc");
        assert_eq!(
            a,
            fingerprint("v3_write", "viz def: timeout after 45 s", "def")
        );
        assert!(a.starts_with("v3_write-") && a.len() == "v3_write-".len() + 8);
        assert_ne!(
            a,
            fingerprint("v2_read", "viz abc: timeout after 30 s", "abc")
        );
        assert_ne!(a, fingerprint("v3_write", "viz abc: refused", "abc"));
    }

    #[test]
    fn a_requeue_resets_the_retry_bookkeeping_only() {
        let f = failure("v", i64::MAX, "m");
        let mut h = f.dead_letter_headers(&Headers::new());
        h.insert(headers::DELIVERY_COUNT.into(), HeaderValue::Int(3));
        h.insert(headers::DEATH.into(), HeaderValue::Str("x".into()));
        h.insert("x-custom".into(), HeaderValue::Int(1));
        reset_for_requeue(&mut h);
        for gone in [headers::ATTEMPTS, headers::DELIVERY_COUNT, headers::DEATH] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        for kept in [
            headers::VIZ,
            headers::ERROR_KIND,
            headers::ERROR_MESSAGE,
            headers::FINGERPRINT,
            headers::FIRST_FAILURE,
            headers::LAST_FAILURE,
            "x-custom",
        ] {
            assert!(h.contains_key(kept), "{kept}");
        }
        assert_eq!(attempt(&h), 1, "a full retry budget again");
    }
}
