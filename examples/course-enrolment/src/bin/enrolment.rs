//! `enrolment`: define courses and subscribe students through a store server, or measure
//! how many subscription commands per second the decision helper carries (`load`).

use clap::{Parser, Subcommand};
use course_enrolment::{Refused, define_course, subscribe};
use projection_sdk::{Client, DecisionHandler, ExecuteError, Upcasters};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Courses with a seat limit, students with a course limit, over a store server")]
struct Args {
    /// The store server.
    #[arg(long, env = "STORE_URL", default_value = "http://127.0.0.1:2114")]
    store: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Opens a course.
    Define {
        #[arg(long)]
        course: String,
        #[arg(long)]
        capacity: u32,
    },
    /// Subscribes a student to a course.
    Subscribe {
        #[arg(long)]
        student: String,
        #[arg(long)]
        course: String,
    },
    /// Runs subscription commands from `clients` tasks for `duration_secs`, students and
    /// courses at random, and prints commands per second.
    Load {
        #[arg(long, default_value_t = 100)]
        courses: u32,
        #[arg(long, default_value_t = 30)]
        capacity: u32,
        #[arg(long, default_value_t = 2000)]
        students: u32,
        #[arg(long, default_value_t = 32)]
        clients: u32,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// A prefix for the course ids, so that runs on one store do not meet.
        #[arg(long, default_value = "load")]
        run: String,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let handler = DecisionHandler::new(Client::new(args.store), Upcasters::new());
    match args.command {
        Command::Define { course, capacity } => {
            report(define_course(&handler, &course, capacity).await)
        }
        Command::Subscribe { student, course } => {
            report(subscribe(&handler, &student, &course).await)
        }
        Command::Load { courses, capacity, students, clients, duration_secs, run } => {
            for course in 0..courses {
                report(define_course(&handler, &format!("{run}-c{course}"), capacity).await)?;
            }
            let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
            let started = Instant::now();
            let until = started + Duration::from_secs(duration_secs);
            let tasks: Vec<_> = (0..clients)
                .map(|client| {
                    let (handler, counts, run) = (handler.clone(), counts.clone(), run.clone());
                    tokio::spawn(async move {
                        let mut seed = u64::from(client) * 2_654_435_761 + 1;
                        while Instant::now() < until {
                            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                            let student = format!("{run}-s{}", (seed >> 33) % u64::from(students));
                            let course = format!("{run}-c{}", (seed >> 13) % u64::from(courses));
                            let slot = match subscribe(&handler, &student, &course).await {
                                Ok(()) => 0,
                                Err(ExecuteError::Domain(_)) => 1,
                                Err(err) => {
                                    eprintln!("{err}");
                                    2
                                }
                            };
                            counts[slot].fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await?;
            }
            let seconds = started.elapsed().as_secs_f64();
            let [admitted, refused, failed] =
                counts.as_ref().each_ref().map(|c| c.load(Ordering::Relaxed));
            let commands = admitted + refused;
            println!(
                "{commands} subscription commands in {seconds:.1} s: {:.0} commands/s \
                 ({admitted} admitted, {refused} refused by a rule, {failed} failed)",
                commands as f64 / seconds
            );
            Ok(())
        }
    }
}

fn report(result: Result<(), ExecuteError<Refused>>) -> Result<(), Box<dyn std::error::Error>> {
    match result {
        Ok(()) => Ok(()),
        Err(ExecuteError::Domain(refused)) => {
            println!("refused: {refused:?}");
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}
