//! Port forwarding over SPDY (`portforward.k8s.io`): for every forwarded
//! connection the client opens an `error` and a `data` stream carrying the
//! same `port` and `requestID` headers; once both are there, the data
//! stream is joined to a new connection to that port. Any number of
//! connections, to any ports, run at once on one SPDY connection.

use std::collections::HashMap;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::streaming::session::SessionCtx;
use crate::streaming::spdy::{Connection, SendHalf, Stream};

struct Pending {
    data: Option<Stream>,
    error: Option<Stream>,
    deadline: Instant,
}

pub async fn serve<IO>(io: IO, pod: String, ctx: SessionCtx)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = match Connection::new(io) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start SPDY connection");
            return;
        }
    };
    let mut pending: HashMap<String, Pending> = HashMap::new();
    // Dropping the set aborts the forwards and closes their connections.
    let mut forwards = JoinSet::new();
    let mut accepting = true;
    let closed = conn.closed_token();
    loop {
        if !accepting && pending.is_empty() && forwards.is_empty() {
            // The client sent GOAWAY and everything it opened is done.
            conn.close(ctx.cancel_grace).await;
            return;
        }
        let next_deadline = pending.values().map(|p| p.deadline).min();
        tokio::select! {
            s = conn.accept(), if accepting => match s {
                Some(stream) => {
                    if let Some((port, data, error)) = pair(&mut pending, stream, &ctx) {
                        forwards.spawn(forward(ctx.clone(), pod.clone(), port, data, error));
                    }
                }
                None => accepting = false,
            },
            _ = tokio::time::sleep_until(next_deadline.unwrap_or_else(Instant::now)),
                if next_deadline.is_some() => expire(&mut pending).await,
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
            _ = closed.cancelled() => {
                tracing::debug!(pod = %pod, "port-forward client went away");
                return;
            }
            _ = ctx.cancel.cancelled() => return,
        }
    }
}

/// Files `stream` with its partner; returns a complete pair.
fn pair(
    pending: &mut HashMap<String, Pending>,
    stream: Stream,
    ctx: &SessionCtx,
) -> Option<(String, Stream, Stream)> {
    let headers = stream.headers();
    let request_id = match headers.get("requestid") {
        Some(id) => id.to_string(),
        // Clients older than the header: kubelet's best-effort fallback.
        None => (stream.id() / 2).to_string(),
    };
    let kind = headers.get("streamtype").map(str::to_string);
    let entry = pending
        .entry(request_id.clone())
        .or_insert_with(|| Pending {
            data: None,
            error: None,
            deadline: Instant::now() + ctx.stream_creation_timeout,
        });
    let slot = match kind.as_deref() {
        Some("data") => &mut entry.data,
        Some("error") => &mut entry.error,
        other => {
            tracing::debug!(stream_type = ?other, "invalid port-forward stream type");
            let (_, send) = stream.into_split();
            send.reset();
            return None;
        }
    };
    if slot.is_some() {
        tracing::debug!(request_id, "duplicate port-forward stream");
        let (_, send) = stream.into_split();
        send.reset();
        return None;
    }
    *slot = Some(stream);
    if entry.data.is_some() && entry.error.is_some() {
        let p = pending.remove(&request_id)?;
        let data = p.data?;
        let port = data.headers().get("port").unwrap_or("").to_string();
        return Some((port, data, p.error?));
    }
    None
}

async fn expire(pending: &mut HashMap<String, Pending>) {
    let now = Instant::now();
    let expired: Vec<String> = pending
        .iter()
        .filter(|(_, p)| p.deadline <= now)
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        if let Some(p) = pending.remove(&id) {
            tracing::debug!(
                request_id = id,
                "timed out waiting for the port-forward stream pair"
            );
            if let Some(error) = p.error {
                let (_, mut send) = error.into_split();
                let _ = send.write_all(b"timed out waiting for streams").await;
            }
        }
    }
}

async fn report(error: &mut SendHalf, msg: &str) {
    tracing::debug!("{msg}");
    let _ = error.write_all(msg.as_bytes()).await;
}

async fn forward(ctx: SessionCtx, pod: String, port: String, data: Stream, error: Stream) {
    let (_error_recv, mut error_send) = error.into_split();
    let port_num = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            report(&mut error_send, &format!("invalid port {port:?}")).await;
            return;
        }
    };
    let target = match ctx.backend.port_forward(&pod, port_num).await {
        Ok(target) => target,
        Err(e) => {
            report(
                &mut error_send,
                &format!("error forwarding port {port_num} to pod {pod}: {e}"),
            )
            .await;
            return;
        }
    };
    let (mut from_client, mut to_client) = data.into_split();
    let (mut from_target, mut to_target) = tokio::io::split(target);
    let up = async {
        let r = tokio::io::copy(&mut from_client, &mut to_target).await;
        let _ = to_target.shutdown().await;
        r
    };
    let down = async {
        let r = tokio::io::copy(&mut from_target, &mut to_client).await;
        // FIN on data and error tells the client this connection is done
        // (kubectl waits for the error stream before it closes its side).
        let _ = to_client.shutdown().await;
        let _ = error_send.shutdown().await;
        r
    };
    tokio::pin!(up, down);
    let outcome: io::Result<u64> = tokio::select! {
        r = &mut up => match r {
            // The client closed its side: let the target finish answering.
            Ok(_) => down.await,
            Err(e) => Err(e),
        },
        r = &mut down => match r {
            Ok(n) => up.await.map(|_| n),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = outcome {
        tracing::debug!(pod = %pod, port = port_num, error = %e, "port-forward connection ended");
    }
}
