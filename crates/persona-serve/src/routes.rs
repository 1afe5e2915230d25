//! The router: authentication, the body limit, and the endpoints besides
//! the completions (models, health, metrics, vector management).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::api::LoadVector;
use crate::complete;
use crate::error::ApiError;

pub(crate) fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(complete::chat))
        .route("/v1/completions", post(complete::completion))
        .route("/v1/persona/vectors", get(list_vectors).post(load_vector))
        .route("/v1/persona/vectors/{name}", delete(unload_vector))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Refuses every request without the server's key, when it has one.
async fn authenticate(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in full whatever the first difference (no timing hint).
        let same = given.is_some_and(|g| {
            g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !same {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// A JSON body, or a 400 (413 when it is over the size limit).
pub(crate) fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| ApiError {
        status: e.status(),
        ..ApiError::bad_request(format!("cannot read the request body: {}", e.body_text()))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// `T` read from `v`, or a 400 naming the field at fault (`prefix` is
/// where `v` sits in the body).
pub(crate) fn read_as<T: DeserializeOwned>(v: &Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix, inner.as_str()) {
            (p, ".") => p.to_string(),
            ("", i) => i.to_string(),
            (p, i) => format!("{p}.{i}"),
        };
        let message = format!(
            "{}: {}",
            if path.is_empty() { "body" } else { &path },
            e.into_inner()
        );
        ApiError {
            param: (!path.is_empty()).then_some(path),
            ..ApiError::bad_request(message)
        }
    })
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"status": "ok", "models": s.models.keys().collect::<Vec<_>>()}))
        .into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn models(State(s): State<Arc<AppState>>) -> Response {
    let data: Vec<_> = s
        .models
        .keys()
        .map(|id| json!({"id": id, "object": "model", "created": s.created, "owned_by": "persona"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn list_vectors(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"object": "list", "data": s.vectors.list()})).into_response()
}

async fn load_vector(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: LoadVector = read_as(&parse_body(body)?, "")?;
    let info = s.vectors.load(&req.path, req.name)?;
    Ok((StatusCode::CREATED, axum::Json(info)).into_response())
}

async fn unload_vector(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    s.vectors.unload(&name)?;
    Ok(axum::Json(json!({"name": name, "deleted": true})).into_response())
}
