//! A typed client for the SFU's internal HTTP API.

use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_sfu_api::{ApiError, ErrorCode, paths};

#[derive(Debug, thiserror::Error)]
pub enum ApiCallError {
    #[error("the SFU refused the request: {0}")]
    Refused(ApiError),
    #[error("the SFU could not be reached: {0}")]
    Transport(#[from] reqwest::Error),
}

impl ApiCallError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused(e) => Some(e.code),
            Self::Transport(_) => None,
        }
    }
}

/// One SFU's internal API at `base` (`http://127.0.0.1:7880`).
#[derive(Clone, Debug)]
pub struct SfuApi {
    http: reqwest::Client,
    pub base: String,
}

impl SfuApi {
    pub fn new(base: impl Into<String>) -> Self {
        Self::with_client(reqwest::Client::new(), base)
    }

    /// Shares `http` (its pool and timeouts) with other SFUs' clients.
    pub fn with_client(http: reqwest::Client, base: impl Into<String>) -> Self {
        Self { http, base: base.into().trim_end_matches('/').to_owned() }
    }

    pub fn url(&self, template: &str, room: &str, participant: &str, track: &str) -> String {
        format!("{}{}", self.base, paths::fill(template, room, participant, track))
    }

    async fn parse<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, ApiCallError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
        }
        let text = response.text().await?;
        let error = serde_json::from_str::<ApiError>(&text)
            .unwrap_or(ApiError { code: ErrorCode::Internal, message: format!("HTTP {status}: {text}") });
        Err(ApiCallError::Refused(error))
    }

    pub async fn get<T: DeserializeOwned>(&self, url: &str) -> Result<T, ApiCallError> {
        Self::parse(self.http.get(url).send().await?).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, url: &str, body: &B) -> Result<T, ApiCallError> {
        Self::parse(self.http.post(url).json(body).send().await?).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, url: &str, body: &B) -> Result<T, ApiCallError> {
        Self::parse(self.http.put(url).json(body).send().await?).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, url: &str) -> Result<T, ApiCallError> {
        Self::parse(self.http.delete(url).send().await?).await
    }

    /// GET of a plain-text endpoint (`/metrics`, `/readyz`): status and body.
    pub async fn get_text(&self, path: &str) -> Result<(u16, String), ApiCallError> {
        let r = self.http.get(format!("{}{path}", self.base)).send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// Raw POST of arbitrary bytes (for malformed-input tests).
    pub async fn post_raw(&self, url: &str, body: &'static str) -> Result<(u16, String), ApiCallError> {
        let r = self.http.post(url).header("content-type", "application/json").body(body).send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    }
}
