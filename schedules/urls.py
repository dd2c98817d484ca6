from rest_framework.routers import SimpleRouter

from schedules.views import ScheduleViewSet

app_name = "schedules"

router = SimpleRouter()
# Clients write both `/schedules` and `/schedules/`; neither should get a redirect.
router.trailing_slash = "/?"
router.register("schedules", ScheduleViewSet, basename="schedule")

urlpatterns = router.urls
