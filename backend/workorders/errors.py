"""The work-order workflow's refusals (each zh + en, codes in ``backend.errors``)."""

from __future__ import annotations

from backend.errors import DomainError, ErrorCode
from backend.workorders.models import STATE_LABELS, WorkOrderState


class TransitionNotAllowed(DomainError):
    code = ErrorCode.WORKORDER_TRANSITION_NOT_ALLOWED

    def __init__(self, state: WorkOrderState, action: str) -> None:
        super().__init__(f"工单当前状态为「{STATE_LABELS[state]}」, 不能{action}",
                         f"The work order is {state.value}: this action is not allowed now")


class AlreadyTaken(DomainError):
    code = ErrorCode.WORKORDER_ALREADY_TAKEN
    message = "工单已被他人接单或派出"
    message_en = "The work order was already taken or dispatched"


class AlreadyRated(DomainError):
    code = ErrorCode.WORKORDER_ALREADY_RATED
    message = "该工单已评价, 不能重复评价"
    message_en = "The work order is already rated"


class NotAssignee(DomainError):
    code = ErrorCode.WORKORDER_NOT_ASSIGNEE
    message = "只有工单的处理人可以执行此操作"
    message_en = "Only the staff member holding the work order may do this"


class RatingInvalid(DomainError):
    code = ErrorCode.WORKORDER_RATING_INVALID
    message = "评分须为 1 至 5 分"
    message_en = "A rating is 1 to 5"
