//! The sender's website for tests: HTTPS with a test-CA certificate (one certificate whatever
//! the SNI, like a plain web server), answering every request `200` with the given headers
//! (e.g. `Strict-Transport-Security`). Stopped on drop.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::TestCa;

pub struct Website {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Website {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Website {
    pub async fn start(ca: &TestCa, names: &[&str], headers: &[(&str, &str)]) -> Self {
        let acceptor = TlsAcceptor::from(ca.server_config(names));
        let headers: Arc<Vec<(String, String)>> = Arc::new(
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let headers = headers.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req| {
                        let headers = headers.clone();
                        async move {
                            let mut b = Response::builder().header("content-type", "text/html");
                            for (k, v) in headers.iter() {
                                b = b.header(k, v);
                            }
                            Ok::<_, std::convert::Infallible>(
                                b.body(Full::new(Bytes::from_static(b"<h1>Example</h1>")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Website { addr, task }
    }
}
