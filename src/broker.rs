//! RabbitMQ: the queue topology (spec 4.3), confirmed publishing, and the moves between queues.
//!
//! - `<prefix>.work`: durable **quorum** queue with a delivery limit; a message delivered that
//!   many times without an ack (a worker crash loop) is dead-lettered by the broker itself.
//! - `<prefix>.retry.<delay>ms`: one durable queue per backoff step; its message TTL dead-letters
//!   each message back to the work queue after the delay.
//! - `<prefix>.dead`: durable quorum DLQ; every dead letter carries the worker's own headers.
//!
//! Every broker dead-lettering is at-least-once, every publish mandatory and confirmed, and the
//! DLQ's delivery limit explicit ([`queue_arguments`]), so no path depends on a default that
//! changed between RabbitMQ versions.
//!
//! Publishing uses a confirm-mode channel and keeps up to [`CONFIRM_WINDOW`] publishes in flight
//! before awaiting their confirms (hundreds in flight, not one round trip each). Every move
//! between queues is publish-with-confirm first, ack second: a crash in between duplicates a
//! message, never loses one.

use crate::config::redact;
use futures_util::future::try_join_all;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::collections::BTreeMap;

/// Publishes in flight before their confirms are awaited.
pub const CONFIRM_WINDOW: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to RabbitMQ at {uri}: {source}")]
    Connect { uri: String, source: lapin::Error },
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused a message for {queue} (nack)")]
    Nacked { queue: String },
    /// A mandatory publish no queue took (`basic.return`): the queue is gone. The move it was
    /// part of must not ack the original.
    #[error("RabbitMQ returned a message for {queue}: {reply}")]
    Returned { queue: String, reply: String },
}

impl BrokerError {
    /// Connection or channel losses: reconnect and carry on. A broker that refuses what we ask
    /// (queue arguments that differ from an existing queue, access refused, a protocol we do not
    /// speak) will refuse it again: not transient.
    pub fn is_transient(&self) -> bool {
        use lapin::ErrorKind as K;
        match self {
            BrokerError::Connect { source, .. } | BrokerError::Amqp(source) => {
                !matches!(
                    source.kind(),
                    K::InvalidProtocolVersion(_)
                        | K::AuthProviderError(_)
                        | K::NoDefaultRuntime
                        | K::ProtocolError(_)
                ) || is_connection_level(source)
            }
            BrokerError::Nacked { .. } | BrokerError::Returned { .. } => true,
        }
    }
}

/// A connection-level AMQP error (e.g. the broker is shutting down) is a restart, not a refusal.
fn is_connection_level(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => matches!(
            p.kind(),
            lapin::protocol::AMQPErrorKind::Hard(lapin::protocol::AMQPHardError::CONNECTIONFORCED)
        ),
        _ => false,
    }
}

/// Queue names and retry policy, all under one prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    pub prefix: String,
    /// Deliveries of one message (without ack) before the broker dead-letters it.
    pub delivery_limit: u32,
    /// Backoff of successive retries; its length is the number of retries.
    pub retry_delays_ms: Vec<u64>,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Topology {
            prefix: prefix.to_string(),
            delivery_limit: 5,
            retry_delays_ms: vec![5_000, 30_000, 120_000],
        }
    }

    pub fn work(&self) -> String {
        format!("{}.work", self.prefix)
    }

    /// The retry queue of attempt `attempt` (0-based), clamped to the last delay.
    pub fn retry(&self, attempt: usize) -> String {
        let i = attempt.min(self.retry_delays_ms.len().saturating_sub(1));
        format!(
            "{}.retry.{}ms",
            self.prefix,
            self.retry_delays_ms.get(i).copied().unwrap_or(0)
        )
    }

    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn all_queues(&self) -> Vec<String> {
        let mut q = vec![self.work()];
        q.extend((0..self.retry_delays_ms.len()).map(|i| self.retry(i)));
        q.push(self.dead());
        q.dedup();
        q
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Connect, naming the connection; errors never show the password.
pub async fn connect(uri: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name("vizhub-migrate".into());
    Connection::connect(uri, props)
        .await
        .map_err(|source| BrokerError::Connect {
            uri: redact(uri),
            source,
        })
}

/// The DLQ's own delivery limit. Reading the DLQ (`dlq list`, `stats`, `export`, a filtered
/// `requeue`) holds messages and returns them by closing its channel; until RabbitMQ 4.3 each
/// such return counts as a delivery, and from 4.0 a quorum queue declared without a limit gets a
/// default of 20 (with no dead-letter target: the letter is dropped). An explicit limit no
/// browsing will reach keeps every dead letter on every version.
pub const DLQ_DELIVERY_LIMIT: i32 = i32::MAX;

/// Every queue of the topology with the arguments it is declared with. Nothing is left to a
/// broker default that differs across RabbitMQ 3.13, 4.0–4.2 and 4.3+ (the version matrix:
/// docs/runbook.md#queues-and-rabbitmq-versions).
pub fn queue_arguments(t: &Topology) -> Vec<(String, FieldTable)> {
    let quorum = ("x-queue-type", long("quorum"));
    // Broker dead-lettering (delivery limit, retry TTL) is at-most-once by default: a move to a
    // queue unavailable at that moment drops the message. At-least-once keeps it until the
    // target confirms; RabbitMQ requires `reject-publish` overflow with it.
    let at_least_once = [
        ("x-dead-letter-strategy", long("at-least-once")),
        ("x-overflow", long("reject-publish")),
    ];
    let mut out = Vec::new();
    let mut work = vec![
        quorum.clone(),
        (
            "x-delivery-limit",
            AMQPValue::LongInt(i32::try_from(t.delivery_limit).unwrap_or(i32::MAX)),
        ),
        ("x-dead-letter-exchange", long("")),
        ("x-dead-letter-routing-key", long(&t.dead())),
    ];
    work.extend(at_least_once.iter().cloned());
    out.push((t.work(), table(&work)));
    for (i, delay) in t.retry_delays_ms.iter().enumerate() {
        let mut retry = vec![
            quorum.clone(),
            (
                "x-message-ttl",
                AMQPValue::LongLongInt(i64::try_from(*delay).unwrap_or(i64::MAX)),
            ),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long(&t.work())),
        ];
        retry.extend(at_least_once.iter().cloned());
        out.push((t.retry(i), table(&retry)));
    }
    out.push((
        t.dead(),
        table(&[
            quorum,
            ("x-delivery-limit", AMQPValue::LongInt(DLQ_DELIVERY_LIMIT)),
        ]),
    ));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Declare the whole topology (idempotent).
pub async fn declare(channel: &Channel, t: &Topology) -> Result<(), BrokerError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (queue, args) in queue_arguments(t) {
        channel
            .queue_declare(queue.as_str().into(), durable, args)
            .await?;
    }
    Ok(())
}

/// A header value we write and read back.
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderValue {
    Str(String),
    Int(i64),
}

/// A message to publish.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, HeaderValue>,
    pub message_id: Option<String>,
}

fn properties(msg: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in &msg.headers {
        let v = match v {
            HeaderValue::Str(s) => long(s),
            HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
        };
        headers.insert(k.as_str().into(), v);
    }
    let p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(headers);
    match &msg.message_id {
        Some(id) => p.with_message_id(id.as_str().into()),
        None => p,
    }
}

/// A delivery's headers, those of a type [`HeaderValue`] carries (ours, and the broker's
/// `x-delivery-count`; [`crate::job`] reads them).
pub fn headers_of(props: &BasicProperties) -> BTreeMap<String, HeaderValue> {
    let mut out = BTreeMap::new();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            let v = match v {
                AMQPValue::LongString(s) => {
                    HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_string()),
                AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
                AMQPValue::LongInt(n) => HeaderValue::Int(*n as i64),
                AMQPValue::LongUInt(n) => HeaderValue::Int(*n as i64),
                AMQPValue::ShortInt(n) => HeaderValue::Int(*n as i64),
                AMQPValue::ShortUInt(n) => HeaderValue::Int(*n as i64),
                AMQPValue::Timestamp(n) => HeaderValue::Int(*n as i64),
                _ => continue,
            };
            out.insert(k.as_str().to_string(), v);
        }
    }
    out
}

/// A confirm-mode channel.
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn new(conn: &Connection) -> Result<Self, BrokerError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    /// Publish every message to `queue`, keeping up to [`CONFIRM_WINDOW`] unconfirmed; returns
    /// once the broker confirmed them all. Any nack is an error (the caller re-runs: publishing
    /// is idempotent downstream).
    pub async fn publish_all(
        &self,
        queue: &str,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<usize, BrokerError> {
        let mut pending = Vec::with_capacity(CONFIRM_WINDOW);
        let mut n = 0;
        for msg in messages {
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    // Mandatory: a message no queue takes comes back (`basic.return`) instead
                    // of being confirmed and dropped.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &msg.body,
                    properties(&msg),
                )
                .await?;
            pending.push(confirm);
            n += 1;
            if pending.len() >= CONFIRM_WINDOW {
                check(queue, try_join_all(pending.drain(..)).await?)?;
            }
        }
        check(queue, try_join_all(pending).await?)?;
        Ok(n)
    }

    /// Publish one message and wait for its confirm.
    pub async fn publish(&self, queue: &str, msg: Message) -> Result<(), BrokerError> {
        self.publish_all(queue, [msg]).await.map(|_| ())
    }
}

/// Every publish confirmed and none returned, or the first failure. Exhaustive on purpose: a
/// new kind of confirmation must be decided here.
fn check(queue: &str, confirms: Vec<Confirmation>) -> Result<(), BrokerError> {
    for c in confirms {
        match c {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                return Err(BrokerError::Returned {
                    queue: queue.to_string(),
                    reply: format!("{} {}", returned.reply_code, returned.reply_text),
                })
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => {
                return Err(BrokerError::Nacked {
                    queue: queue.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Ready messages and consumers of a queue (passive declare).
pub async fn queue_depth(channel: &Channel, queue: &str) -> Result<(u32, u32), BrokerError> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((q.message_count(), q.consumer_count()))
}

/// Move a delivery to `to_queue`: publish (confirmed) with its headers plus `extra`, then ack.
/// `Ok(false)` when the ack was refused because the channel reset since delivery: the original
/// comes back later (and the copy is already published; jobs are idempotent).
pub async fn move_delivery(
    publisher: &Publisher,
    delivery: &lapin::message::Delivery,
    to_queue: &str,
    extra: BTreeMap<String, HeaderValue>,
) -> Result<bool, BrokerError> {
    let mut headers = headers_of(&delivery.properties);
    // The broker's count of deliveries from the queue the job leaves, not the job's: RabbitMQ
    // 3.x replaces a published one on a first delivery, 4.0 delivers it as published, so a
    // copy would make the job look delivered before in a queue that never delivered it.
    headers.remove(crate::job::headers::DELIVERY_COUNT);
    headers.extend(extra);
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_string());
    publisher
        .publish(
            to_queue,
            Message {
                body: delivery.data.clone(),
                headers,
                message_id,
            },
        )
        .await?;
    Ok(delivery.ack(BasicAckOptions::default()).await?)
}

/// The next message of `queue` on `channel`, unacked (so this channel never sees it twice).
/// Messages another channel just returned (a browse that closed a moment ago) can take a moment
/// to be ready again: while the queue still reports more messages than are ready, wait briefly.
async fn next_message(
    channel: &Channel,
    queue: &str,
) -> Result<Option<lapin::message::Delivery>, BrokerError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        if let Some(m) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        {
            return Ok(Some(m.delivery));
        }
        let (ready, _) = queue_depth(channel, queue).await?;
        if ready == 0 || std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A message read without consuming it.
#[derive(Clone, Debug, PartialEq)]
pub struct Browsed {
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, HeaderValue>,
    pub message_id: Option<String>,
}

/// Read up to `max` messages of `queue` without consuming them: they are fetched unacked on a
/// private channel that is then closed, which returns them all to the queue.
pub async fn browse(
    conn: &Connection,
    queue: &str,
    max: usize,
) -> Result<Vec<Browsed>, BrokerError> {
    let channel = conn.create_channel().await?;
    let mut out = Vec::new();
    while out.len() < max {
        let Some(d) = next_message(&channel, queue).await? else {
            break;
        };
        out.push(Browsed {
            body: d.data.clone(),
            headers: headers_of(&d.properties),
            message_id: d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_string()),
        });
    }
    channel.close(200, "browsed".into()).await?;
    Ok(out)
}

/// Move the messages of `from` that `decide` selects to `to` (publish-with-confirm, then ack),
/// their headers changed by `rewrite` (a requeued job drops its retry bookkeeping:
/// [`crate::job::reset_for_requeue`]); the others return to `from` untouched. With `dry_run`
/// nothing moves. Returns the count.
pub async fn requeue(
    conn: &Connection,
    from: &str,
    to: &str,
    dry_run: bool,
    mut decide: impl FnMut(&Browsed) -> bool,
    rewrite: impl Fn(&mut BTreeMap<String, HeaderValue>),
) -> Result<usize, BrokerError> {
    let channel = conn.create_channel().await?;
    let publisher = Publisher::new(conn).await?;
    let mut moved = 0;
    while let Some(d) = next_message(&channel, from).await? {
        let b = Browsed {
            body: d.data.clone(),
            headers: headers_of(&d.properties),
            message_id: d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_string()),
        };
        if !decide(&b) {
            continue;
        }
        moved += 1;
        if dry_run {
            continue;
        }
        let mut headers = b.headers.clone();
        rewrite(&mut headers);
        publisher
            .publish(
                to,
                Message {
                    body: b.body,
                    headers,
                    message_id: b.message_id,
                },
            )
            .await?;
        d.ack(BasicAckOptions::default()).await?;
    }
    // Unselected (and, in a dry run, all) messages go back to the queue as they were.
    channel.close(200, "requeued".into()).await?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg<'a>(t: &'a FieldTable, k: &str) -> Option<&'a AMQPValue> {
        t.inner().get(k)
    }

    #[test]
    fn every_queue_argument_is_explicit() {
        let t = Topology::new("p");
        let args = queue_arguments(&t);
        assert_eq!(
            args.iter().map(|(q, _)| q.clone()).collect::<Vec<_>>(),
            t.all_queues()
        );
        for (q, a) in &args {
            assert_eq!(arg(a, "x-queue-type"), Some(&long("quorum")), "{q}");
            // Every queue the broker dead-letters from does it at least once.
            if arg(a, "x-dead-letter-routing-key").is_some() {
                assert_eq!(
                    arg(a, "x-dead-letter-strategy"),
                    Some(&long("at-least-once")),
                    "{q}"
                );
                assert_eq!(arg(a, "x-overflow"), Some(&long("reject-publish")), "{q}");
            }
        }
        let get = |q: String| args.iter().find(|(n, _)| *n == q).unwrap().1.clone();
        let work = get(t.work());
        assert_eq!(arg(&work, "x-delivery-limit"), Some(&AMQPValue::LongInt(5)));
        assert_eq!(
            arg(&work, "x-dead-letter-routing-key"),
            Some(&long(&t.dead()))
        );
        for i in 0..t.retry_delays_ms.len() {
            let retry = get(t.retry(i));
            assert_eq!(
                arg(&retry, "x-dead-letter-routing-key"),
                Some(&long(&t.work()))
            );
            assert!(arg(&retry, "x-message-ttl").is_some());
        }
        // The DLQ: a delivery limit of its own that browsing never reaches (RabbitMQ 4.0 gives
        // quorum queues 20 by default), and no dead-letter target.
        let dead = get(t.dead());
        assert_eq!(
            arg(&dead, "x-delivery-limit"),
            Some(&AMQPValue::LongInt(DLQ_DELIVERY_LIMIT))
        );
        assert!(arg(&dead, "x-dead-letter-routing-key").is_none());
    }
}
