//! The `fleetup-server` binary: parses the command line and hands over to the library.
//! (The demo lives in the umbrella `fleetup` binary, so this one carries no agent.)

use clap::Parser as _;
use fleetup_server::cli::{Cli, Command, EnrollmentTokenCommand, TlsCommand, TokenCommand, UserCommand};
use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    fleetup_proto::logging::init(cli.log_format, "FLEETUP_LOG");
    match runtime.block_on(serve(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(command: Command) -> anyhow::Result<()> {
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    match command {
        Command::Serve(config) => {
            let listener = tokio::net::TcpListener::bind(&config.listen).await?;
            fleetup_server::run(config, listener, shutdown).await?;
        }
        Command::Token { command: TokenCommand::Create { role, name, expires_in, database_url } } => {
            let created = fleetup_server::cli::create_expiring_token(&database_url, role, &name, expires_in).await?;
            if let Some(at) = created.token.expires_at {
                eprintln!("token {} expires at {}", created.token.id, at.to_rfc3339());
            }
            println!("{}", created.secret);
        }
        Command::Token { command: TokenCommand::List { database_url } } => {
            print!("{}", fleetup_server::cli::list_tokens(&database_url).await?);
        }
        Command::Token { command: TokenCommand::Revoke { id, database_url } } => {
            fleetup_server::cli::revoke_token(&database_url, &id).await?;
            println!("revoked API token {id}");
        }
        Command::EnrollmentToken { command: EnrollmentTokenCommand::List { database_url } } => {
            print!("{}", fleetup_server::cli::list_enrollment_tokens(&database_url).await?);
        }
        Command::EnrollmentToken { command: EnrollmentTokenCommand::Revoke { id, database_url } } => {
            fleetup_server::cli::revoke_enrollment_token(&database_url, &id).await?;
            println!("revoked enrollment token {id}; agents enrolled with it keep working");
        }
        Command::User { command: UserCommand::List { database_url } } => {
            print!("{}", fleetup_server::cli::list_users(&database_url).await?);
        }
        Command::User { command: UserCommand::Disable { username, database_url } } => {
            fleetup_server::cli::set_user_disabled(&database_url, &username, true).await?;
            println!("disabled user {username}; their sessions ended");
        }
        Command::User { command: UserCommand::Enable { username, database_url } } => {
            fleetup_server::cli::set_user_disabled(&database_url, &username, false).await?;
            println!("enabled user {username}");
        }
        Command::User { command: UserCommand::ResetPassword { username, password_stdin, database_url } } => {
            let password = fleetup_server::cli::read_password(password_stdin)?;
            fleetup_server::cli::reset_password(&database_url, &username, &password).await?;
            println!("set a new password for {username}; their sessions ended");
        }
        Command::User { command: UserCommand::Create { username, role, password_stdin, database_url } } => {
            let password = fleetup_server::cli::read_password(password_stdin)?;
            fleetup_server::cli::create_user(&database_url, &username, &password, role).await?;
            println!("created {} user {username}", role.as_str());
        }
        Command::Tls { command: TlsCommand::Init { dir, names, days } } => {
            let q = fleetup_server::tls::init(&dir, &names, days)?;
            println!("CA certificate (give to agents as --ca-cert): {}", q.ca_cert.display());
            println!("CA key (keep it offline):                     {}", q.ca_key.display());
            println!("server certificate (--tls-cert):             {}", q.cert.display());
            println!("server key (--tls-key):                      {}", q.key.display());
            println!("CA SHA-256 fingerprint: {}", q.fingerprint);
        }
    }
    Ok(())
}
