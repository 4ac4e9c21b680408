"""Saved query schemes (模板/查询方案): a user's named choice of columns and filters for a
readings screen, optionally shared with everyone who may open that screen."""
