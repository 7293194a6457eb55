"""Operations shared by the faces (CLI, HTTP routes, jobs): what molserve does, not how it is asked."""
