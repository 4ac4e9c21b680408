"""The holiday calendar's one table: ``calendar_days``, the days that differ from the
weekday rule (Monday to Friday working, Saturday and Sunday not).

A ``holiday`` row is a day off even on a weekday (春节, 国庆节 …); a ``workday`` row is a
make-up working day (调休上班) even on a Saturday or Sunday. Every other day follows the
weekday rule. ``source`` says where the row came from: the ``chinese-calendar`` package
(``shuiwu holidays seed``, the demo) or a file an operator loaded (``shuiwu holidays load``).
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from sqlalchemy import Column, Date, String
from sqlmodel import Field, SQLModel

from backend.db import enum_column


class DayKind(StrEnum):
    holiday = "holiday"  # 法定节假日 (a day off)
    workday = "workday"  # 调休上班 (a make-up working day on a weekend)


class DaySource(StrEnum):
    package = "package"  # the chinese-calendar package
    file = "file"  # a file loaded with `shuiwu holidays load`


class CalendarDay(SQLModel, table=True):
    __tablename__ = "calendar_days"

    day: date = Field(sa_column=Column(Date, primary_key=True))
    kind: DayKind = Field(sa_column=enum_column(DayKind, nullable=False))
    # The holiday it is, or the one a make-up day makes up for: 春节, 国庆节 …
    name: str = Field(sa_column=Column(String(50), nullable=False))
    source: DaySource = Field(sa_column=enum_column(DaySource, nullable=False))
