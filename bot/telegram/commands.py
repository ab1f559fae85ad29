"""Every command the bot has, written once: the routers, the menus, /help and the privacy
rule read it. A handler is registered with `Commands.<name>.filter()`.

A command marked `private` shows the user's own data (or the operator's), so in a group
the bot answers it with a link to the private chat instead. For a command that only shows
something (`read_only`), the link's /start payload runs it there (`start_payload` and
`command_from_payload`); one that changes something is never run by a tap on a link,
which anyone can post.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiogram.filters import Command
from aiogram.utils.i18n import lazy_gettext as __
from babel.support import LazyProxy


@dataclass(frozen=True)
class BotCommandInfo:
    """One command; its name is the attribute of `Commands` that holds it."""

    description: LazyProxy  # one line, for the command menu and /help
    args: str = ""  # how to call it, e.g. "<id> <n>"
    admin: bool = False
    private: bool = False
    read_only: bool = True  # changes nothing: safe to run from a link
    name: str = field(default="", init=False)

    def __set_name__(self, owner: type, name: str) -> None:
        object.__setattr__(self, "name", name)  # the one place the name is written

    def filter(self) -> Command:
        """What a router registers the command's handler with."""
        return Command(self.name)


class Commands:
    """Every command, in the order of the menus and /help."""

    start = BotCommandInfo(__("Start and choose a mode"))
    help = BotCommandInfo(__("What I can do"))
    mode = BotCommandInfo(__("Change the mode"))
    new = BotCommandInfo(__("Start a new conversation"), read_only=False)
    memory = BotCommandInfo(__("Remember the conversation in this mode: on or off"),
                            read_only=False)
    language = BotCommandInfo(__("Change the language"))
    me = BotCommandInfo(__("My mode and requests left today"), private=True)
    history = BotCommandInfo(__("My last requests and their answers"), private=True)
    cancel = BotCommandInfo(__("Stop waiting for my requests"), private=True, read_only=False)
    units = BotCommandInfo(__("Balance, spending, days left"), admin=True, private=True)
    stats = BotCommandInfo(__("Users, requests, failures"), admin=True, private=True)
    user = BotCommandInfo(__("A user's card"), "<id>", admin=True, private=True)
    quota = BotCommandInfo(__("A user's daily quota"), "<id> <n | unlimited | default>",
                           admin=True, private=True, read_only=False)
    grant = BotCommandInfo(__("Extra requests for today"), "<id> <n>", admin=True,
                           private=True, read_only=False)
    ban = BotCommandInfo(__("Ban a user, also before they write"), "<id>", admin=True,
                         private=True, read_only=False)
    unban = BotCommandInfo(__("Lift a ban"), "<id>", admin=True, private=True, read_only=False)


COMMANDS: tuple[BotCommandInfo, ...] = tuple(
    value for value in vars(Commands).values() if isinstance(value, BotCommandInfo))
COMMANDS_BY_NAME = {command.name: command for command in COMMANDS}


def names(*, admin: bool, private: bool | None = None) -> tuple[str, ...]:
    """Names of the user (or admin) commands, optionally only the private ones."""
    return tuple(c.name for c in COMMANDS
                 if c.admin == admin and (private is None or c.private == private))


# What Telegram allows in a /start payload: 1-64 of A-Z a-z 0-9 _ -
_PAYLOAD = re.compile(r"[A-Za-z0-9_-]{1,64}")


def start_payload(command: str, args: str | None) -> str | None:
    """The /start payload that runs `/command args` in the private chat, if it may be run
    from a link. Arguments go along when they fit a payload (ids, words)."""
    if not COMMANDS_BY_NAME[command].read_only:
        return None
    words = (args or "").split()
    payload = "-".join((command, *words))
    return payload if words and _PAYLOAD.fullmatch(payload) else command


def command_from_payload(payload: str) -> str | None:
    """The command text a /start payload stands for, if it names a private, read-only one."""
    name, *args = payload.split("-")
    command = COMMANDS_BY_NAME.get(name)
    if command is None or not command.private or not command.read_only:
        return None
    return " ".join((f"/{name}", *args))


# A /start payload that shows a job's whole answer in the private chat: the link under an
# inline answer that was cut to fit its one message. Only the job's owner is shown it.
_ANSWER_PAYLOAD = re.compile(r"answer-([1-9][0-9]{0,17})")


def answer_payload(job_id: int) -> str:
    return f"answer-{job_id}"


def answer_from_payload(payload: str) -> int | None:
    """The job whose whole answer a /start payload asks for, if it asks for one."""
    match = _ANSWER_PAYLOAD.fullmatch(payload)
    return int(match.group(1)) if match else None
