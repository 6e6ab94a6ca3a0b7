//! TLS termination: HTTP/1.1 and HTTP/2 (ALPN) over rustls, the app told
//! `X-Forwarded-Proto: https`, and bad key material refused at config time.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::{DEADLINE, Harness, Upstream};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use sessionward::config::{Config, RawTls};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

struct Cert {
    dir: PathBuf,
    cert_pem: String,
}

impl Cert {
    fn generate(tag: &str) -> Cert {
        let dir =
            std::env::temp_dir().join(format!("sessionward-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_pem = ck.cert.pem();
        std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        Cert { dir, cert_pem }
    }

    fn raw(&self) -> RawTls {
        RawTls {
            cert: path(&self.dir.join("cert.pem")),
            key: path(&self.dir.join("key.pem")),
        }
    }

    async fn connect(
        &self,
        addr: std::net::SocketAddr,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                rustls::pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
                    .unwrap(),
            )
            .unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        timeout(
            DEADLINE,
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .unwrap()
        .expect("TLS handshake")
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP/1.1 client connection over an established TLS stream.
async fn http1(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[tokio::test]
async fn http1_over_tls_reaches_the_app_as_https() {
    let cert = Cert::generate("h1");
    let h = Harness::build(
        Upstream::start().await,
        |c| {
            c.tls = Some(cert.raw());
            c.cookie.secure = true;
        },
        None,
    )
    .await;
    let tls = cert.connect(h.addr, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut send = http1(tls).await;
    let req = Request::get("/secure?x=1")
        .header("host", "app.example")
        .header("x-reply-header", r#"x-session-update: {"tls":true}"#)
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = timeout(DEADLINE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("sessionid=") && cookie.contains("Secure"),
        "{cookie}"
    );
    let rec = h.upstream.last();
    assert_eq!(rec.headers["x-forwarded-proto"], "https");
    assert_eq!(h.claims_of(&rec).path, "/secure?x=1");
}

#[tokio::test]
async fn http2_is_negotiated_with_alpn() {
    let cert = Cert::generate("h2");
    let h = Harness::build(Upstream::start().await, |c| c.tls = Some(cert.raw()), None).await;
    let tls = cert.connect(h.addr, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/h2")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = timeout(DEADLINE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "received 0 bytes");
    assert_eq!(h.upstream.last().headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn plain_http_on_a_tls_port_is_refused_and_the_server_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = Cert::generate("plain");
    let h = Harness::build(Upstream::start().await, |c| c.tls = Some(cert.raw()), None).await;
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = timeout(DEADLINE, tcp.read_to_end(&mut buf)).await.unwrap();
    assert!(!buf.starts_with(b"HTTP/1.1 200"));
    assert!(h.upstream.requests().is_empty());
    let tls = cert.connect(h.addr, b"http/1.1").await;
    let mut send = http1(tls).await;
    let req = Request::get("/")
        .header("host", "x")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
}

#[test]
fn unreadable_or_mismatched_key_material_is_a_config_error() {
    let cert = Cert::generate("bad");
    let other = Cert::generate("other");
    let cases = [
        RawTls {
            cert: "/nonexistent/cert.pem".into(),
            key: cert.raw().key,
        },
        RawTls {
            cert: cert.raw().key,
            key: cert.raw().key,
        },
        RawTls {
            cert: cert.raw().cert,
            key: other.raw().key,
        },
    ];
    for tls in cases {
        let mut raw = common::raw_config("127.0.0.1:1".parse().unwrap());
        raw.tls = Some(tls.clone());
        let err = Config::try_from(raw).unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(p.path, "tls", "{tls:?}");
        assert!(!p.message.is_empty());
    }
}

#[tokio::test]
async fn a_new_certificate_on_disk_is_used_without_dropping_connections() {
    let cert = Cert::generate("reload");
    let h = Harness::build(Upstream::start().await, |c| c.tls = Some(cert.raw()), None).await;
    let first = cert.connect(h.addr, b"http/1.1").await;
    let presented = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let old_der = presented(&first);
    let mut kept = http1(first).await;

    // A renewed certificate replaces the files, as cert-manager would.
    let renewed = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(
        cert.dir.join("key.pem"),
        renewed.signing_key.serialize_pem(),
    )
    .unwrap();
    std::fs::write(cert.dir.join("cert.pem"), renewed.cert.pem()).unwrap();
    let renewed_pem = renewed.cert.pem();

    // New connections get the new certificate within the watch interval; a
    // client trusting only the new one fails until then.
    let deadline = std::time::Instant::now() + DEADLINE;
    let new_der = loop {
        if let Ok(Some(tls)) = timeout(DEADLINE, connect_trusting(h.addr, &renewed_pem)).await {
            break presented(&tls);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_ne!(new_der, old_der);

    // The connection made before the reload still works.
    let req = Request::get("/after-reload")
        .header("host", "x")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = timeout(DEADLINE, kept.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h.upstream.last().path, "/after-reload");
}

/// A TLS connection that trusts only `pem`; `None` if the handshake fails.
async fn connect_trusting(
    addr: std::net::SocketAddr,
    pem: &str,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()
}

/// An https upstream with `cert`, answering with whether it got a token.
async fn https_upstream(cert: &Cert) -> u16 {
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(cert.dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(cert.dir.join("key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let token = req.headers().contains_key("x-session");
                        let resp = http::Response::builder()
                            .header("x-upstream-tls", "yes")
                            .header("x-got-token", if token { "yes" } else { "no" })
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn an_https_upstream_is_reached_over_tls_and_its_certificate_checked() {
    let cert = Cert::generate("upstream");
    let port = https_upstream(&cert).await;
    let ca = path(&cert.dir.join("cert.pem"));
    let h = Harness::with(|c| {
        c.upstream = Some(format!("https://localhost:{port}"));
        c.upstream_tls.ca_file = Some(ca);
    })
    .await;
    let r = h.client.get("/").send().await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-upstream-tls"], "yes");
    assert_eq!(r.headers["x-got-token"], "yes");

    // The same upstream is refused when its certificate is not trusted.
    let other = Cert::generate("other-ca");
    let wrong_ca = path(&other.dir.join("cert.pem"));
    let h = Harness::with(|c| {
        c.upstream = Some(format!("https://localhost:{port}"));
        c.upstream_tls.ca_file = Some(wrong_ca);
    })
    .await;
    assert_eq!(
        h.client.get("/").send().await.status,
        StatusCode::BAD_GATEWAY
    );
}
