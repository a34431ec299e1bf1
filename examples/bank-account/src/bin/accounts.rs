//! `accounts`: the command side. `POST /accounts/{id}/deposit` and `/withdraw` with
//! `{"amount": N}` run the account aggregate on stream `account-{id}` and answer the
//! position of the append, which a client can hand to `balances` to read its own write.
//! `PUT /accounts/{id}/holder` with `{"name": …}` records the holder's name as personal data
//! of the holder's data subject; `DELETE /accounts/{id}/holder` erases that subject.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use bank_account::{Account, AccountEvent, Command, Refusal, holder, stream, upcasters};
use clap::Parser;
use projection_sdk::protocol::ExpectedRevision;
use projection_sdk::{Client, CommandHandler, ExecuteError};
use serde_json::json;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(about = "The bank account's command side")]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "ACCOUNTS_LISTEN", default_value = "127.0.0.1:3001")]
    listen: std::net::SocketAddr,
    /// The store server.
    #[arg(long, env = "STORE_URL", default_value = "http://127.0.0.1:2114")]
    store: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Amount {
    amount: i64,
}

fn problem(status: StatusCode, code: &str, detail: impl std::fmt::Display) -> Response {
    let body = json!({"type": format!("/problems/{code}"), "title": code, "status": status.as_u16(), "detail": detail.to_string()});
    (status, [("content-type", "application/problem+json")], body.to_string()).into_response()
}

async fn command(
    State(handler): State<Arc<CommandHandler>>,
    Path((id, action)): Path<(String, String)>,
    body: Result<Json<Amount>, JsonRejection>,
) -> Response {
    let command = match action.as_str() {
        "deposit" => Command::Deposit,
        "withdraw" => Command::Withdraw,
        _ => return problem(StatusCode::NOT_FOUND, "not-found", "no such action"),
    };
    let Ok(stream) = stream(&id) else {
        return problem(StatusCode::BAD_REQUEST, "invalid-request", "invalid account id");
    };
    let amount = match body {
        Ok(Json(Amount { amount })) => amount,
        Err(rejection) => {
            return problem(rejection.status(), "invalid-request", rejection.body_text());
        }
    };
    match handler.execute::<Account>(&stream, command(amount)).await {
        Ok(result) => {
            let position = result.map(|r| r.last_position);
            Json(json!({"account_id": id, "position": position})).into_response()
        }
        Err(ExecuteError::Domain(refusal)) => {
            let code = match refusal {
                Refusal::NotPositive => "invalid-amount",
                Refusal::InsufficientFunds { .. } => "insufficient-funds",
            };
            problem(StatusCode::UNPROCESSABLE_ENTITY, code, refusal)
        }
        Err(err) => {
            tracing::error!(account = %id, cause = %err, "command failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the store is unavailable, try again",
            )
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Holder {
    name: String,
}

/// What the holder routes use.
struct Holders {
    client: Client,
}

/// `PUT /accounts/{id}/holder`: appends `HolderNamed` about the holder's data subject, so
/// the store keeps the name sealed under that subject's key.
async fn name_holder(
    State(holders): State<Arc<Holders>>,
    Path(id): Path<String>,
    body: Result<Json<Holder>, JsonRejection>,
) -> Response {
    let (Ok(stream), Ok(subject)) = (stream(&id), holder(&id)) else {
        return problem(StatusCode::BAD_REQUEST, "invalid-request", "invalid account id");
    };
    let name = match body {
        Ok(Json(Holder { name })) => name,
        Err(rejection) => {
            return problem(rejection.status(), "invalid-request", rejection.body_text());
        }
    };
    let event = match upcasters().encode(&AccountEvent::HolderNamed { name }) {
        Ok(event) => event.about(subject),
        Err(err) => return problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", err),
    };
    match holders.client.append(&stream, ExpectedRevision::Any, vec![event]).await {
        Ok(result) => {
            Json(json!({"account_id": id, "position": result.last_position})).into_response()
        }
        Err(err) => unavailable(&id, &err),
    }
}

/// `DELETE /accounts/{id}/holder`: erases the holder's data subject. The balance stays.
async fn erase_holder(State(holders): State<Arc<Holders>>, Path(id): Path<String>) -> Response {
    let Ok(subject) = holder(&id) else {
        return problem(StatusCode::BAD_REQUEST, "invalid-request", "invalid account id");
    };
    match holders.client.erase_data_subject(&subject).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err)
            if err.problem_type()
                == Some(projection_sdk::protocol::ProblemType::DataSubjectNotFound) =>
        {
            problem(StatusCode::NOT_FOUND, "not-found", "this account's holder was never named")
        }
        Err(err) => unavailable(&id, &err),
    }
}

fn unavailable(id: &str, err: &projection_sdk::Error) -> Response {
    tracing::error!(account = %id, cause = %err, "command failed");
    problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the store is unavailable, try again")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let args = Args::parse();
    let handler = Arc::new(CommandHandler::new(Client::new(&args.store), upcasters()));
    let holders = Arc::new(Holders { client: Client::new(&args.store) });
    let app = axum::Router::new()
        .route("/accounts/{id}/holder", put(name_holder).delete(erase_holder))
        .with_state(holders)
        .merge(
            axum::Router::new().route("/accounts/{id}/{action}", post(command)).with_state(handler),
        );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(address = %args.listen, store = %args.store, "accounts serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
