//! The course example against a real store on each backend: both limits hold under racing
//! commands, every run.

use course_enrolment::{COURSES_PER_STUDENT_MAX, Refused, define_course, subscribe};
use futures_util::future::join_all;
use projection_sdk::{Client, DecisionHandler, ExecuteError, Upcasters};
use store_testing::{TestServer, per_backend};

per_backend!(server:
    thirty_two_students_racing_for_ten_seats_leave_ten_subscribed_every_run,
    a_student_racing_into_eight_courses_gets_five,
    the_rules_refuse_what_they_should,
);

fn handler(server: &TestServer) -> DecisionHandler {
    DecisionHandler::new(Client::new(&server.url), Upcasters::new()).attempts_max(100)
}

fn refused(result: &Result<(), ExecuteError<Refused>>) -> Option<&Refused> {
    match result {
        Err(ExecuteError::Domain(refused)) => Some(refused),
        Ok(()) => None,
        Err(err) => panic!("{err}"),
    }
}

async fn thirty_two_students_racing_for_ten_seats_leave_ten_subscribed_every_run(
    server: &TestServer,
) {
    let handler = handler(server);
    for run in 0..3 {
        let course = format!("algebra-{run}");
        define_course(&handler, &course, 10).await.unwrap();
        let attempts = (0..32).map(|student| {
            let (handler, course) = (&handler, &course);
            async move { subscribe(handler, &format!("s{student}"), course).await }
        });
        let results = join_all(attempts).await;
        let admitted = results.iter().filter(|r| refused(r).is_none()).count();
        assert_eq!(admitted, 10, "run {run}");
        assert!(results.iter().filter_map(refused).all(|r| *r == Refused::CourseFull));
    }
}

async fn a_student_racing_into_eight_courses_gets_five(server: &TestServer) {
    let handler = handler(server);
    for course in 0..8 {
        define_course(&handler, &format!("c{course}"), 100).await.unwrap();
    }
    let attempts = (0..8).map(|course| {
        let handler = &handler;
        async move { subscribe(handler, "ada", &format!("c{course}")).await }
    });
    let results = join_all(attempts).await;
    let admitted = results.iter().filter(|r| refused(r).is_none()).count();
    assert_eq!(admitted, COURSES_PER_STUDENT_MAX);
    assert!(results.iter().filter_map(refused).all(|r| *r == Refused::TooManyCourses));
}

async fn the_rules_refuse_what_they_should(server: &TestServer) {
    let handler = handler(server);
    define_course(&handler, "logic", 1).await.unwrap();
    assert_eq!(refused(&define_course(&handler, "logic", 5).await), Some(&Refused::CourseExists));
    assert_eq!(refused(&subscribe(&handler, "ada", "nothing").await), Some(&Refused::NoSuchCourse));
    subscribe(&handler, "ada", "logic").await.unwrap();
    assert_eq!(
        refused(&subscribe(&handler, "ada", "logic").await),
        Some(&Refused::AlreadySubscribed)
    );
    assert_eq!(refused(&subscribe(&handler, "bob", "logic").await), Some(&Refused::CourseFull));
    // The events are where the example says, with their tags.
    let (_, page) = server.get("/streams/student-ada").await;
    let event = &page["events"][0];
    assert_eq!(event["type"], "StudentSubscribed");
    assert_eq!(event["tags"], serde_json::json!(["course:logic", "student:ada"]));
}
