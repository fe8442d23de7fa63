import asyncio

from pydantic import BaseModel

from iterflow import Engine, FlowContext


class SignedUp(BaseModel):
    user_id: str
    email: str


class Done(BaseModel):
    user_id: str
    what: str


class Ticket(BaseModel):
    customer: str


class Message(BaseModel):
    text: str


class Thread(BaseModel):
    customer: str
    messages: list[str]


engine = Engine()  # no URL: $ITERFLOW_DATABASE_URL, $DATABASE_URL, else embedded in ./.iterflow


# Two flows subscribe to one event: publish starts both, in one transaction.
@engine.flow("send_welcome", input=SignedUp, output=Done, on=["user.signed_up"])
async def send_welcome(ctx: FlowContext, event: SignedUp) -> Done:
    async def send() -> str:
        return f"welcome mail to {event.email}"  # call your mail API here

    await ctx.step("send", send)
    return Done(user_id=event.user_id, what="welcomed")


@engine.flow("create_contact", input=SignedUp, output=Done, on=["user.signed_up"])
async def create_contact(ctx: FlowContext, event: SignedUp) -> Done:
    return Done(user_id=event.user_id, what="contact created")


# One support thread per customer: the first message starts it, the next ones join it.
@engine.flow("support", input=Ticket, output=Thread, signals={"message": Message})
async def support(ctx: FlowContext, ticket: Ticket) -> Thread:
    first = await ctx.signal("message", Message)
    second = await ctx.signal("message", Message, timeout="7d")
    return Thread(customer=ticket.customer, messages=[first.text, second.text])


async def main(database_url: str | None = None) -> tuple[list[str], Thread]:
    if database_url is not None:
        engine.configure(database_url=database_url)
    async with engine:
        await engine.migrate()
        await engine.listen(concurrency=4)
        event = SignedUp(user_id="u1", email="ann@example.com")
        published = await engine.publish("user.signed_up", event, idempotency_key="signup-u1")
        again = await engine.publish("user.signed_up", event, idempotency_key="signup-u1")
        assert [r.run_id for r in again.runs] == [r.run_id for r in published.runs]
        outcomes = [(await engine.result(r.run_id, timeout=30)).what for r in published.runs]

        for text in ("my order is late", "any news?"):  # e.g. two inbound e-mails
            sent = await engine.signal_with_start(
                support,
                Ticket(customer="c-42"),
                "message",
                Message(text=text),
                idempotency_key="support-c-42",  # one thread per customer
            )
            print(sent.created, sent.signal.kind)  # True buffered, then False delivered/buffered
        thread = await support.result(sent.run_id, timeout=30)
        print(outcomes, thread)
        return outcomes, thread


if __name__ == "__main__":
    asyncio.run(main())
