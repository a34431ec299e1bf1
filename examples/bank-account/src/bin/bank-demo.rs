//! `bank-demo`: the seed's usage, through the two services: deposit 100 and withdraw 40 on
//! `acc1`, then read the balance from the read model once it has caught up with the writes.

use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Runs the seed's bank account usage through the services")]
struct Args {
    /// The `accounts` service.
    #[arg(long, default_value = "http://127.0.0.1:3001")]
    accounts: String,
    /// The `balances` service.
    #[arg(long, default_value = "http://127.0.0.1:3002")]
    balances: String,
    /// The account to use.
    #[arg(long, default_value = "acc1")]
    account: String,
}

async fn command(
    http: &reqwest::Client,
    url: String,
    amount: i64,
) -> Result<Value, Box<dyn std::error::Error>> {
    let response = http.post(url).json(&json!({"amount": amount})).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        return Err(format!("{status}: {body}").into());
    }
    Ok(body)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    let account = format!("{}/accounts/{}", args.accounts, args.account);
    command(&http, format!("{account}/deposit"), 100).await?;
    let withdrawn = command(&http, format!("{account}/withdraw"), 40).await?;
    let position = withdrawn["position"].as_u64().ok_or("no position in the answer")?;
    // Eventual consistency, answered: wait until the read model has our write.
    let url = format!("{}/balances/{}?min_position={position}", args.balances, args.account);
    let balance: Value = http.get(url).send().await?.error_for_status()?.json().await?;
    println!("Read model balance: {}", balance["balance"]);
    Ok(())
}
