//! Every error the API answers: `{"error": "<one line>"}` with a status
//! that says whose fault it is (4xx the request's, 5xx orch's or the
//! engine's).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orch_orchestrator::display_chain;
use orch_orchestrator::{Error, ErrorKind};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An answer with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let mut message: String = message.into();
        message.retain(|c| c != '\n' && c != '\r');
        ApiError { status, message }
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        let status = match error.kind() {
            ErrorKind::Input => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Ambiguous => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // An id that cannot be one is the request's fault.
        let status = if matches!(error, Error::Registry(orch_registry::Error::InvalidId(_))) {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        ApiError::new(status, display_chain(&error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = orch_protocol::ErrorBody {
            error: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}
