//! Request bodies held to a pace: a client that stops sending (`idle`) or sends too slowly to
//! matter (under `min_bytes_per_second` over a `rate_window`) is cut, so an upload cannot hold a
//! connection, an upload session's lock and a task for ever by sending a byte now and then.
//! The consumer sees an error frame and treats it like a client that went away: an upload
//! keeps what arrived for a resume, a body read whole is refused.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::config::BodyLimits;

/// The client's fault: its body stopped or crawled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PaceError {
    #[error("no request body bytes for {0} s")]
    Idle(u64),
    #[error("request body too slow: {got} bytes in {seconds} s, under the minimum of {min} bytes/s")]
    TooSlow { got: u64, seconds: u64, min: u64 },
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Paced<B> {
    inner: B,
    limits: BodyLimits,
    idle: Pin<Box<Sleep>>,
    window_start: Instant,
    got: u64,
}

impl<B> Paced<B> {
    pub fn new(inner: B, limits: &BodyLimits) -> Paced<B> {
        let now = Instant::now();
        Paced { inner, limits: limits.clone(), idle: Box::pin(tokio::time::sleep_until(now + limits.idle)), window_start: now, got: 0 }
    }

    /// Counts `n` bytes arrived at `now`; at a window's end, fails if it got too few.
    fn record(&mut self, n: u64, now: Instant) -> Result<(), PaceError> {
        self.got = self.got.saturating_add(n);
        if n > 0 {
            self.idle.as_mut().reset(now + self.limits.idle);
        }
        let window = self.limits.rate_window;
        if now < self.window_start + window {
            return Ok(());
        }
        let min = self.limits.min_bytes_per_second;
        if self.got < min.saturating_mul(window.as_secs().max(1)) {
            let seconds = now.duration_since(self.window_start).as_secs();
            return Err(PaceError::TooSlow { got: self.got, seconds, min });
        }
        self.window_start = now;
        self.got = 0;
        Ok(())
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                match this.record(n, Instant::now()) {
                    Ok(()) => Poll::Ready(Some(Ok(frame))),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(PaceError::Idle(this.limits.idle.as_secs()).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The limits for tests: `idle` and a window of `window` at `min` bytes/s.
#[cfg(test)]
fn limits(idle: std::time::Duration, min: u64, window: std::time::Duration) -> BodyLimits {
    BodyLimits { idle, min_bytes_per_second: min, rate_window: window }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::stream::{self, BoxStream, StreamExt};
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    use super::{Paced, limits};

    /// `n` one-byte frames, one every `every`.
    fn trickle(every: Duration, n: usize) -> StreamBody<BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>> {
        let frames = stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Frame::data(Bytes::from_static(b"x"))), i + 1))
        });
        StreamBody::new(frames.boxed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_is_cut_at_the_idle_limit() {
        let body = Paced::new(trickle(Duration::from_secs(60), 1), &limits(Duration::from_secs(5), 0, Duration::from_secs(30)));
        let err = body.collect().await.expect_err("a stalled body was read to its end");
        assert!(err.to_string().contains("no request body bytes for 5 s"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_crawls_is_cut_at_the_end_of_a_window() {
        let lim = limits(Duration::from_secs(5), 100, Duration::from_secs(3));
        let err = Paced::new(trickle(Duration::from_secs(1), 100), &lim).collect().await.expect_err("a 1 B/s body was read");
        assert!(err.to_string().contains("too slow"), "{err}");
        // fast enough: read whole
        let ok = Paced::new(trickle(Duration::from_millis(1), 1000), &lim).collect().await.expect("a fast body was cut");
        assert_eq!(ok.to_bytes().len(), 1000);
    }
}
