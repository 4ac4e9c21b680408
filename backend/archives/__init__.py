"""Archives (档案管理): areas, households, meters, concentrators and assignments."""
