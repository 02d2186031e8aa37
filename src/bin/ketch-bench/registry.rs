//! A minimal registry push client (distribution API v2, plain HTTP) for the
//! loopback registry the benchmark starts: blobs by monolithic upload
//! (POST then PUT with the digest), then the manifest by tag. Hand-written
//! over hyper because the only registry spoken to is a local one without
//! TLS or auth, and a full OCI client would bring a TLS stack for nothing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::images::{Blob, Image};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("registry {addr} did not answer within {secs}s")]
    NotReady { addr: String, secs: u64 },
    #[error("HTTP to {addr} failed: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("bad request {what}: {source}")]
    Request {
        what: String,
        source: hyper::http::Error,
    },
    #[error("{method} {path}: registry answered {status}: {body}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("upload of {digest} to {repository}: no Location in the answer")]
    NoLocation { repository: String, digest: String },
}

pub struct Registry {
    /// host:port
    addr: String,
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: Bytes,
}

impl Registry {
    pub fn new(addr: &str) -> Registry {
        Registry {
            addr: addr.to_owned(),
        }
    }

    /// Waits until the registry answers `GET /v2/`.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), RegistryError> {
        let deadline = Instant::now() + limit;
        loop {
            match self.send(Method::GET, "/v2/", None, Bytes::new()).await {
                Ok(a) if a.status.is_success() => return Ok(()),
                _ if Instant::now() > deadline => {
                    return Err(RegistryError::NotReady {
                        addr: self.addr.clone(),
                        secs: limit.as_secs(),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// One request on a fresh connection.
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Answer, RegistryError> {
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|source| RegistryError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let http_err = |source| RegistryError::Http {
            addr: self.addr.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, &self.addr)
            .header(hyper::header::CONTENT_LENGTH, body.len());
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|source| RegistryError::Request {
                what: format!("{method} {path}"),
                source,
            })?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        driver.abort();
        Ok(Answer {
            status,
            location,
            body,
        })
    }

    fn expect(
        method: Method,
        path: &str,
        answer: &Answer,
        ok: &[StatusCode],
    ) -> Result<(), RegistryError> {
        if ok.contains(&answer.status) {
            Ok(())
        } else {
            Err(RegistryError::Status {
                method,
                path: path.to_owned(),
                status: answer.status,
                body: String::from_utf8_lossy(&answer.body)
                    .chars()
                    .take(300)
                    .collect(),
            })
        }
    }

    async fn push_blob(&self, repository: &str, blob: &Blob) -> Result<(), RegistryError> {
        let path = format!("/v2/{repository}/blobs/{}", blob.digest);
        let head = self.send(Method::HEAD, &path, None, Bytes::new()).await?;
        if head.status == StatusCode::OK {
            return Ok(());
        }
        let start = format!("/v2/{repository}/blobs/uploads/");
        let answer = self.send(Method::POST, &start, None, Bytes::new()).await?;
        Self::expect(Method::POST, &start, &answer, &[StatusCode::ACCEPTED])?;
        let location = answer.location.ok_or_else(|| RegistryError::NoLocation {
            repository: repository.to_owned(),
            digest: blob.digest.clone(),
        })?;
        // The Location may be absolute (http://host/...) or a path.
        let location = match location.strip_prefix("http://") {
            Some(rest) => rest
                .find('/')
                .map_or("/".to_owned(), |i| rest[i..].to_owned()),
            None => location,
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", blob.digest);
        let answer = self
            .send(
                Method::PUT,
                &put,
                Some("application/octet-stream"),
                blob.data.clone(),
            )
            .await?;
        Self::expect(Method::PUT, &put, &answer, &[StatusCode::CREATED])
    }

    /// Pushes the image's blobs, then its manifest under its tag.
    pub async fn push(&self, image: &Image) -> Result<(), RegistryError> {
        for blob in image.layers.iter().chain(std::iter::once(&image.config)) {
            self.push_blob(&image.repository, blob).await?;
        }
        let path = format!("/v2/{}/manifests/{}", image.repository, image.tag);
        let answer = self
            .send(
                Method::PUT,
                &path,
                Some(image.manifest.media_type),
                image.manifest.data.clone(),
            )
            .await?;
        Self::expect(Method::PUT, &path, &answer, &[StatusCode::CREATED])
    }

    /// The reference a runtime pulls `image` by.
    pub fn reference(&self, image: &Image) -> String {
        format!("{}/{}:{}", self.addr, image.repository, image.tag)
    }
}
