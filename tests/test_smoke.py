from conversations.messages import Inbound, Kind


def test_app_builds_and_answers(make_app, db_url):
    app = make_app(database_url=db_url)
    handled = app.engine.handle(Inbound(channel="console", address="a", kind=Kind.COMMAND, command="start",
                                        text="/start"))
    assert handled.replies and handled.replies[0][1].choices
