//! Courses with a seat limit and students with a course limit: the classic example of the
//! Dynamic Consistency Boundary (dcb.events). A subscription is one event, but the rule it
//! must keep spans two things: the course's seats and the student's courses. No single
//! stream holds both, so an aggregate would need a saga; here each command reads exactly the
//! events its rule depends on, by tags, and appends on the condition that none of them
//! changed since ([`projection_sdk::DecisionHandler`]).

use projection_sdk::protocol::{EventType, QueryItem, StreamName, Tag};
use projection_sdk::{DecisionHandler, DecisionModel, ExecuteError};
use serde::{Deserialize, Serialize};

/// How many courses one student may take.
pub const COURSES_PER_STUDENT_MAX: usize = 5;

/// What happens in this domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// A course opened with `capacity` seats.
    CourseDefined {
        /// The course.
        course: String,
        /// Its seats.
        capacity: u32,
    },
    /// A student took a seat in a course.
    StudentSubscribed {
        /// The student.
        student: String,
        /// The course.
        course: String,
    },
}

/// The tag every event about `course` carries.
pub fn course_tag(course: &str) -> Tag {
    Tag::new(format!("course:{course}")).expect("course ids make valid tags")
}

/// The tag every event about `student` carries.
pub fn student_tag(student: &str) -> Tag {
    Tag::new(format!("student:{student}")).expect("student ids make valid tags")
}

fn types(names: &[&str]) -> Vec<EventType> {
    names.iter().map(|n| EventType::new(*n).expect("valid type")).collect()
}

fn item(names: &[&str], tag: Tag) -> QueryItem {
    QueryItem::new(types(names), vec![tag]).expect("an item with types and a tag")
}

/// Where an event is stored, and its tags: both models store alike.
fn stream_of(event: &Event) -> StreamName {
    let name = match event {
        Event::CourseDefined { course, .. } => format!("course-{course}"),
        Event::StudentSubscribed { student, .. } => format!("student-{student}"),
    };
    StreamName::new(name).expect("ids make valid stream names")
}

fn tags_of(event: &Event) -> Vec<Tag> {
    match event {
        Event::CourseDefined { course, .. } => vec![course_tag(course)],
        Event::StudentSubscribed { student, course } => {
            vec![course_tag(course), student_tag(student)]
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The course exists already.
    CourseExists,
    /// No such course.
    NoSuchCourse,
    /// Every seat is taken.
    CourseFull,
    /// The student takes [`COURSES_PER_STUDENT_MAX`] courses already.
    TooManyCourses,
    /// The student takes this course already.
    AlreadySubscribed,
}

/// Opens a course.
#[derive(Debug, Clone)]
pub struct DefineCourse {
    /// The course.
    pub course: String,
    /// Its seats.
    pub capacity: u32,
}

/// Whether a course exists: all that defining one needs to know.
#[derive(Debug)]
pub struct CourseExists(bool);

impl DecisionModel for CourseExists {
    type Event = Event;
    type Command = DefineCourse;
    type Error = Refused;

    fn query(command: &DefineCourse) -> Vec<QueryItem> {
        vec![item(&["CourseDefined"], course_tag(&command.course))]
    }

    fn initial(_: &DefineCourse) -> Self {
        Self(false)
    }

    fn stream(event: &Event) -> StreamName {
        stream_of(event)
    }

    fn tags(event: &Event) -> Vec<Tag> {
        tags_of(event)
    }

    fn apply(&mut self, _: &Event) {
        self.0 = true;
    }

    fn decide(&self, command: DefineCourse) -> Result<Vec<Event>, Refused> {
        if self.0 {
            return Err(Refused::CourseExists);
        }
        Ok(vec![Event::CourseDefined { course: command.course, capacity: command.capacity }])
    }
}

/// Subscribes a student to a course.
#[derive(Debug, Clone)]
pub struct Subscribe {
    /// The student.
    pub student: String,
    /// The course.
    pub course: String,
}

/// What a subscription's two rules need: the course's capacity and seats taken, the
/// student's courses.
#[derive(Debug)]
pub struct Subscription {
    student: String,
    course: String,
    capacity: Option<u32>,
    seats_taken: u32,
    courses_of_student: Vec<String>,
}

impl DecisionModel for Subscription {
    type Event = Event;
    type Command = Subscribe;
    type Error = Refused;

    fn query(command: &Subscribe) -> Vec<QueryItem> {
        vec![
            item(&["CourseDefined", "StudentSubscribed"], course_tag(&command.course)),
            item(&["StudentSubscribed"], student_tag(&command.student)),
        ]
    }

    fn initial(command: &Subscribe) -> Self {
        Self {
            student: command.student.clone(),
            course: command.course.clone(),
            capacity: None,
            seats_taken: 0,
            courses_of_student: Vec::new(),
        }
    }

    fn stream(event: &Event) -> StreamName {
        stream_of(event)
    }

    fn tags(event: &Event) -> Vec<Tag> {
        tags_of(event)
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::CourseDefined { capacity, .. } => self.capacity = Some(*capacity),
            Event::StudentSubscribed { student, course } => {
                // The query selects the course's subscriptions and the student's: an event
                // may be both.
                if *course == self.course {
                    self.seats_taken += 1;
                }
                if *student == self.student {
                    self.courses_of_student.push(course.clone());
                }
            }
        }
    }

    fn decide(&self, command: Subscribe) -> Result<Vec<Event>, Refused> {
        let capacity = self.capacity.ok_or(Refused::NoSuchCourse)?;
        if self.courses_of_student.contains(&command.course) {
            return Err(Refused::AlreadySubscribed);
        }
        if self.seats_taken >= capacity {
            return Err(Refused::CourseFull);
        }
        if self.courses_of_student.len() >= COURSES_PER_STUDENT_MAX {
            return Err(Refused::TooManyCourses);
        }
        Ok(vec![Event::StudentSubscribed { student: command.student, course: command.course }])
    }
}

/// Opens `course` with `capacity` seats.
///
/// # Errors
/// [`Refused::CourseExists`], or the store's failure.
pub async fn define_course(
    handler: &DecisionHandler,
    course: &str,
    capacity: u32,
) -> Result<(), ExecuteError<Refused>> {
    let command = DefineCourse { course: course.to_owned(), capacity };
    handler.execute::<CourseExists>(command).await.map(|_| ())
}

/// Subscribes `student` to `course`, keeping both limits however many run at once.
///
/// # Errors
/// A [`Refused`] rule, or the store's failure.
pub async fn subscribe(
    handler: &DecisionHandler,
    student: &str,
    course: &str,
) -> Result<(), ExecuteError<Refused>> {
    let command = Subscribe { student: student.to_owned(), course: course.to_owned() };
    handler.execute::<Subscription>(command).await.map(|_| ())
}
