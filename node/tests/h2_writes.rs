//! `nod::tls::GatherWrites`, which every accepted connection is wrapped
//! in: a server connection puts off writing what its streams queued by one
//! scheduler turn, so responses finished by different tasks in the same
//! turn leave in one write instead of one write each (watch fan-out and
//! ranges, BENCHMARKS.md commentary). The test runs h2's server, as hyper
//! does, over a wrapped connection and counts the writes that reach it.
//!
//! The runtime has one worker, as busy members effectively do: a task that
//! wakes the connection task hands it the worker's LIFO slot, so without
//! the wrapper the connection would run, and write, after every response.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use nod::tls::GatherWrites;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// One end of the connection, counting the writes that carry bytes.
struct CountingIo {
    inner: DuplexStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

const STREAMS: usize = 32;

async fn read_body(mut body: h2::RecvStream) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    got
}

/// Answers a request with `body` and ends the stream.
fn answer(respond: &mut h2::server::SendResponse<Bytes>, body: Bytes) {
    let mut stream = respond
        .send_response(http::Response::new(()), false)
        .expect("response");
    stream.send_data(body, true).expect("data");
}

fn assert_few_writes(used: usize, what: &str) {
    assert!(
        used <= 4,
        "{STREAMS} {what} took {used} writes; they should share a few"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn responses_finished_in_one_turn_share_a_write() {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(AtomicUsize::new(0));
    let server_io = GatherWrites::new(CountingIo {
        inner: server_io,
        writes: writes.clone(),
    });

    // The client sends every request, then waits for every answer.
    let client = tokio::spawn(async move {
        let (send, conn) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send.ready().await.expect("ready");
        let mut pending = Vec::new();
        for i in 0..STREAMS {
            let req = http::Request::post(format!("http://nod/{i}"))
                .body(())
                .unwrap();
            let (resp, _) = send.send_request(req, true).expect("request");
            pending.push(resp);
        }
        let mut bodies = Vec::new();
        for resp in pending {
            bodies.push(read_body(resp.await.expect("response").into_body()).await);
        }
        bodies
    });

    let mut conn = h2::server::handshake(server_io).await.expect("handshake");
    let mut requests = Vec::new();
    while requests.len() < STREAMS {
        let (req, respond) = conn
            .accept()
            .await
            .expect("a request")
            .expect("a valid request");
        requests.push((req.uri().path().to_string(), respond));
    }
    // The connection runs on its own task, as in hyper.
    let serve = tokio::spawn(async move {
        while let Some(r) = conn.accept().await {
            r.expect("no more requests");
        }
    });
    // Each answer from a task of its own, all made runnable at once from
    // the worker, as a member's request tasks are when one driver turn
    // finishes them.
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    for (path, mut respond) in requests {
        let mut go = go_rx.clone();
        tokio::spawn(async move {
            let _ = go.wait_for(|go| *go).await;
            answer(&mut respond, Bytes::from(format!("answer to {path}")));
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let before = writes.load(Ordering::SeqCst);
    tokio::spawn(async move {
        let _ = go_tx.send(true);
    });
    let bodies = client.await.expect("client");
    let used = writes.load(Ordering::SeqCst) - before;
    serve.abort();

    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(body, format!("answer to /{i}").as_bytes());
    }
    // Without the wrapper: about one write per answer.
    assert_few_writes(used, "answers");
}
