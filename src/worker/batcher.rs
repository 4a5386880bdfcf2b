//! Deliveries into batches, the way batch sinks buffer events: a batch is handed on when it
//! holds the batch size, or when its first item has waited the batch wait (a timer armed by
//! that item, so a quiet queue never holds a lone job for longer). A stage of its own so the
//! worker's loop only schedules what comes out of it, and so these rules are tested without a
//! broker.

use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// A stream of batches of `input`'s items (`input` yields `Result<T, E>`, as a consumer does).
///
/// An error is passed on at once, ahead of the buffer, and the end of `input` ends this stream;
/// either way what is buffered stays for [`Batches::take_buffered`]. Not flushing it on its own
/// leaves the caller to decide what becomes of it (the worker runs it as a last batch, drained
/// like the others, whatever ended its session).
pub struct Batches<S, T> {
    input: S,
    size: usize,
    wait: Duration,
    buffer: Vec<T>,
    /// `wait` after the buffer's first item arrived; polled only while the buffer holds
    /// something, so a stale deadline never flushes an empty buffer.
    deadline: Pin<Box<Sleep>>,
    ended: bool,
}

impl<S, T, E> Batches<S, T>
where
    S: Stream<Item = Result<T, E>> + Unpin,
{
    /// Batches of at most `size` items (at least 1), each handed on when full or once its first
    /// item has waited `wait` (zero: whatever has arrived, at once).
    pub fn new(input: S, size: usize, wait: Duration) -> Self {
        let size = size.max(1);
        Batches {
            input,
            size,
            wait,
            buffer: Vec::with_capacity(size),
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
            ended: false,
        }
    }

    /// Items received and not yet handed on in a batch.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Empty the buffer: what it held, in the order received (possibly nothing).
    pub fn take_buffered(&mut self) -> Vec<T> {
        std::mem::replace(&mut self.buffer, Vec::with_capacity(self.size))
    }

    /// Whether the buffer's first item has waited long enough. Also registers the wakeup for
    /// when it will have.
    fn due(&mut self, cx: &mut Context<'_>) -> bool {
        !self.buffer.is_empty() && self.deadline.as_mut().poll(cx).is_ready()
    }
}

impl<S, T, E> Stream for Batches<S, T>
where
    S: Stream<Item = Result<T, E>> + Unpin,
    T: Unpin,
{
    type Item = Result<Vec<T>, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // The oldest item's wait first: items that keep arriving never stretch a batch's wait.
        if this.due(cx) {
            return Poll::Ready(Some(Ok(this.take_buffered())));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        // Take whatever the input has ready, up to a full batch.
        loop {
            match Pin::new(&mut this.input).poll_next(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    let first = this.buffer.is_empty();
                    if first {
                        this.deadline.as_mut().reset(Instant::now() + this.wait);
                    }
                    this.buffer.push(item);
                    // The new deadline is polled once here, so its wakeup is registered.
                    if this.buffer.len() >= this.size || (first && this.due(cx)) {
                        return Poll::Ready(Some(Ok(this.take_buffered())));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    /// A channel's receiving end as the input (tokio-stream, which has one, is no dependency).
    struct Receiver(UnboundedReceiver<Result<u32, &'static str>>);

    impl Stream for Receiver {
        type Item = Result<u32, &'static str>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }

    type Input = UnboundedSender<Result<u32, &'static str>>;

    fn batches(size: usize, wait: Duration) -> (Input, Batches<Receiver, u32>) {
        let (tx, rx) = unbounded_channel();
        (tx, Batches::new(Receiver(rx), size, wait))
    }

    const LONG: Duration = Duration::from_secs(3600);
    /// A bound for what should happen at once (far above any scheduling delay).
    const SOON: Duration = Duration::from_secs(10);

    async fn next(b: &mut Batches<Receiver, u32>) -> Option<Result<Vec<u32>, &'static str>> {
        tokio::time::timeout(SOON, b.next())
            .await
            .expect("no batch in time")
    }

    #[tokio::test]
    async fn a_full_batch_is_handed_on_without_waiting() {
        let (tx, mut b) = batches(3, LONG);
        for i in 1..=7 {
            tx.send(Ok(i)).unwrap();
        }
        assert_eq!(next(&mut b).await, Some(Ok(vec![1, 2, 3])));
        assert_eq!(next(&mut b).await, Some(Ok(vec![4, 5, 6])));
        assert_eq!(b.buffered_len(), 0);
        // The seventh waits for company (or for an hour).
        assert!(tokio::time::timeout(Duration::from_millis(50), b.next())
            .await
            .is_err());
        assert_eq!(b.buffered_len(), 1);
        assert_eq!(b.take_buffered(), vec![7]);
    }

    #[tokio::test]
    async fn a_partial_batch_is_handed_on_once_its_first_item_has_waited() {
        let wait = Duration::from_millis(100);
        let (tx, mut b) = batches(10, wait);
        let start = Instant::now();
        tx.send(Ok(1)).unwrap();
        let later = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            later.send(Ok(2)).unwrap();
        });
        // Both, after the first one's wait, not the second one's.
        assert_eq!(next(&mut b).await, Some(Ok(vec![1, 2])));
        let took = start.elapsed();
        assert!(took >= wait, "{took:?}");
        // The next batch's timer starts with its own first item, not from the stale deadline.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let third = Instant::now();
        tx.send(Ok(3)).unwrap();
        assert_eq!(next(&mut b).await, Some(Ok(vec![3])));
        assert!(third.elapsed() >= wait, "{:?}", third.elapsed());
    }

    #[tokio::test]
    async fn a_zero_wait_hands_on_what_has_arrived() {
        let (tx, mut b) = batches(10, Duration::ZERO);
        tx.send(Ok(1)).unwrap();
        tx.send(Ok(2)).unwrap();
        assert_eq!(next(&mut b).await, Some(Ok(vec![1, 2])));
        tx.send(Ok(3)).unwrap();
        assert_eq!(next(&mut b).await, Some(Ok(vec![3])));
    }

    #[tokio::test]
    async fn an_error_is_passed_on_at_once_and_the_buffer_kept() {
        let (tx, mut b) = batches(10, LONG);
        tx.send(Ok(1)).unwrap();
        tx.send(Err("channel closed")).unwrap();
        tx.send(Ok(2)).unwrap();
        assert_eq!(next(&mut b).await, Some(Err("channel closed")));
        assert_eq!(b.take_buffered(), vec![1]);
    }

    #[tokio::test]
    async fn the_end_of_the_input_ends_the_stream_and_keeps_the_buffer() {
        let (tx, mut b) = batches(10, LONG);
        tx.send(Ok(1)).unwrap();
        tx.send(Ok(2)).unwrap();
        drop(tx);
        assert_eq!(next(&mut b).await, None);
        assert_eq!(next(&mut b).await, None);
        assert_eq!(b.buffered_len(), 2);
        assert_eq!(b.take_buffered(), vec![1, 2]);
        assert!(b.take_buffered().is_empty());
    }

    #[tokio::test]
    async fn an_empty_buffer_never_fires() {
        let (_tx, mut b) = batches(10, Duration::ZERO);
        assert!(tokio::time::timeout(Duration::from_millis(50), b.next())
            .await
            .is_err());
        // A size of 0 counts as 1: every item is a batch.
        let (tx, mut one) = batches(0, LONG);
        tx.send(Ok(5)).unwrap();
        assert_eq!(next(&mut one).await, Some(Ok(vec![5])));
    }
}
