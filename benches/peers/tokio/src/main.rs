//! A broadcast server as tokio-tungstenite's own `server.rs` example writes it, on a
//! current-thread runtime: every text message received is sent to every client.
//!
//! Usage: peer-tokio [PORT] [batched]   (or env PORT; default 9102), listening on 127.0.0.1.
//!
//! `batched`: each connection's writer `feed`s every message already queued and
//! flushes once, instead of the example's `forward` (one flush per message): the
//! strongest simple form of this design, as an honest anchor for fan-out per CPU.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_channel::mpsc::{unbounded, UnboundedSender};
use futures_channel::mpsc::UnboundedReceiver;
use futures_util::{future, pin_mut, SinkExt, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

type Tx = UnboundedSender<Message>;
type PeerMap = Arc<Mutex<HashMap<SocketAddr, Tx>>>;

/// Write every queued message with `feed`, then one `flush`, until the channel ends.
async fn batched_writer<S>(mut sink: S, mut rx: UnboundedReceiver<Message>)
where
    S: futures_util::Sink<Message> + Unpin,
{
    while let Some(m) = rx.next().await {
        if sink.feed(m).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if sink.feed(m).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

async fn handle_connection(peers: PeerMap, stream: TcpStream, addr: SocketAddr, batched: bool) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (tx, rx) = unbounded();
    peers.lock().unwrap().insert(addr, tx);
    let (outgoing, incoming) = ws.split();
    let broadcast_incoming = incoming.try_for_each(|msg| {
        if msg.is_text() {
            let peers = peers.lock().unwrap();
            for tx in peers.values() {
                let _ = tx.unbounded_send(msg.clone());
            }
        }
        future::ok(())
    });
    if batched {
        let receive_from_others = batched_writer(outgoing, rx);
        pin_mut!(broadcast_incoming, receive_from_others);
        future::select(broadcast_incoming, receive_from_others).await;
    } else {
        let receive_from_others = rx.map(Ok).forward(outgoing);
        pin_mut!(broadcast_incoming, receive_from_others);
        future::select(broadcast_incoming, receive_from_others).await;
    }
    peers.lock().unwrap().remove(&addr);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok())
        .and_then(|p| p.parse().ok())
        .unwrap_or(9102);
    let batched = std::env::args().nth(2).as_deref() == Some("batched");
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    let peers = PeerMap::default();
    loop {
        let (stream, addr) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(handle_connection(peers.clone(), stream, addr, batched));
    }
}
