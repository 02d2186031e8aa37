//! Port forwarding over WebSocket (`v4.channel.k8s.io`, also accepted as
//! `portforward.k8s.io` or without a subprotocol): the ports are fixed when
//! the connection opens; port `i` has data channel `2i` and error channel
//! `2i+1`, and the first message the server sends on each carries the port
//! number as two bytes, little-endian. One connection per port.

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::streaming::session::{AbortOnDrop, SessionCtx};
use crate::streaming::wschannel::{
    self, ChannelReader, ChannelWriter, INBOUND_QUEUE, OUTBOUND_QUEUE, message,
};

pub async fn serve<S>(ws: WebSocketStream<S>, pod: String, ports: Vec<u16>, ctx: SessionCtx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(OUTBOUND_QUEUE);
    let mut writer = AbortOnDrop(tokio::spawn(wschannel::write_loop(sink, out_rx)));
    let mut inbound: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut readers = Vec::new();
    for _ in &ports {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        inbound.push(Some(tx));
        inbound.push(None);
        readers.push(ChannelReader::new(rx));
    }
    let gone = CancellationToken::new();
    let _reader = AbortOnDrop(tokio::spawn(wschannel::read_loop(
        stream,
        inbound,
        false,
        gone.clone(),
    )));
    let mut forwards = JoinSet::new();
    for ((i, &port), reader) in ports.iter().enumerate().zip(readers) {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        let prefix = port.to_le_bytes();
        if out_tx.send(message(data, &prefix)).await.is_err()
            || out_tx.send(message(error, &prefix)).await.is_err()
        {
            return;
        }
        forwards.spawn(forward(
            ctx.clone(),
            pod.clone(),
            port,
            reader,
            ChannelWriter::new(data, out_tx.clone()),
            ChannelWriter::new(error, out_tx.clone()),
        ));
    }
    loop {
        tokio::select! {
            next = forwards.join_next() => if next.is_none() { break },
            _ = gone.cancelled() => return,
            _ = ctx.cancel.cancelled() => return,
        }
    }
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let finish = async {
        out_tx.send(Message::Close(Some(close))).await.ok()?;
        drop(out_tx);
        (&mut writer.0).await.ok()
    };
    let _ = tokio::time::timeout(ctx.cancel_grace, finish).await;
}

async fn forward(
    ctx: SessionCtx,
    pod: String,
    port: u16,
    mut from_client: ChannelReader,
    mut to_client: ChannelWriter,
    mut error: ChannelWriter,
) {
    let target = match ctx.backend.port_forward(&pod, port).await {
        Ok(target) => target,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            tracing::debug!("{msg}");
            let _ = error.write_all(msg.as_bytes()).await;
            return;
        }
    };
    let (mut from_target, mut to_target) = tokio::io::split(target);
    let up = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_target).await;
        let _ = to_target.shutdown().await;
        // A WebSocket channel cannot be half-closed: stay until the socket
        // goes, the session ends this task.
        std::future::pending::<()>().await
    };
    // The forward is over when the target closes its side.
    tokio::select! {
        r = tokio::io::copy(&mut from_target, &mut to_client) => {
            if let Err(e) = r {
                tracing::debug!(pod = %pod, port, error = %e, "port-forward connection ended");
            }
        }
        _ = up => {}
    }
}
