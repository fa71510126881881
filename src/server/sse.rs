//! Server-sent event streams that end properly when the server shuts down: a stream still open when the grace
//! period runs out gets a terminal error event instead of being cut mid-way.

use axum::response::sse::Event;
use futures::{Stream, StreamExt};
use std::future::Future;
use std::task::Poll;
use tokio_util::sync::CancellationToken;

/// One server-sent event, as `/openapi.json` describes the `text/event-stream` answers (documentation only: the
/// handlers write events with axum's `Event`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    /// The event's name: `token`, `attribution`, `done` or `error` on `/v1/qa`; absent (`message`) on the
    /// OpenAI endpoints.
    event: Option<String>,
    /// The event's JSON payload, as text (`[DONE]` ends an OpenAI stream).
    data: String,
}

/// `events`, ended early by the events of `last` when `shutdown` is cancelled before they end.
pub fn until_shutdown<S>(
    events: S,
    shutdown: CancellationToken,
    last: Vec<Event>,
) -> impl Stream<Item = Event> + Send
where
    S: Stream<Item = Event> + Send + 'static,
{
    let mut events = Box::pin(events);
    let mut stop = Box::pin(shutdown.cancelled_owned());
    let mut last = Some(last);
    let mut tail: Option<std::vec::IntoIter<Event>> = None;
    futures::stream::poll_fn(move |cx| {
        if let Some(tail) = &mut tail {
            return Poll::Ready(tail.next());
        }
        if let Poll::Ready(item) = events.poll_next_unpin(cx) {
            return Poll::Ready(item);
        }
        if stop.as_mut().poll(cx).is_ready() {
            let mut rest = last.take().unwrap_or_default().into_iter();
            let first = rest.next();
            tail = Some(rest);
            return Poll::Ready(first);
        }
        Poll::Pending
    })
}

/// The message of the terminal event of a stream cut by shutdown.
pub const SHUTTING_DOWN: &str = "the server is shutting down; retry the request";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_cut_by_shutdown_ends_with_the_last_events() {
        let token = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let source = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let stream = until_shutdown(source, token.clone(), vec![Event::default().data("bye")]);
        tokio::pin!(stream);
        tx.send(Event::default().data("one")).unwrap();
        assert!(stream.next().await.is_some());
        token.cancel();
        let last = stream.next().await.expect("the terminal event");
        assert!(format!("{last:?}").contains("bye"), "{last:?}");
        assert!(stream.next().await.is_none(), "then the end");
    }

    #[tokio::test]
    async fn a_finished_stream_gets_nothing_more() {
        let token = CancellationToken::new();
        let source = futures::stream::iter([Event::default().data("only")]);
        let stream = until_shutdown(source, token.clone(), vec![Event::default().data("bye")]);
        tokio::pin!(stream);
        assert!(stream.next().await.is_some());
        assert!(stream.next().await.is_none());
        token.cancel();
    }
}
